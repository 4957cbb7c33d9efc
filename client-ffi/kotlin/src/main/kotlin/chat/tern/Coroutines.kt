/*
 * Coroutine helpers over the generated bindings (tern_ffi.kt, generated at build time): a
 * session's events as a Flow, and a progress callback from a lambda.
 */
package chat.tern

import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.flow

/**
 * The session's events in order, until it stops.
 *
 * Each event is taken when the collector asks for it. Cancelling the collection while it waits
 * may drop the event that was about to arrive; to wait with a limit, use
 * [Session.nextEventWithin], which never drops one.
 */
fun Session.events(): Flow<SessionEvent> = flow {
    while (true) {
        val event = nextEvent() ?: break
        emit(event)
    }
}

/**
 * A [TransferProgress] that calls [block] with the bytes done and the total after each chunk.
 * It runs on a thread of the library: hand the numbers to the UI thread rather than touching
 * views in it.
 */
fun progress(block: (doneBytes: ULong, totalBytes: ULong) -> Unit): TransferProgress =
    object : TransferProgress {
        override fun onProgress(doneBytes: ULong, totalBytes: ULong) = block(doneBytes, totalBytes)
    }
