/*
 * The Kotlin SDK against a real ternd: accounts, messages, receipts, groups, media, errors, a
 * server restart, and event order. Each test says what it proves.
 */
package chat.tern

import java.nio.file.Path
import kotlin.random.Random
import kotlinx.coroutines.flow.filterIsInstance
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test

/** How long a test waits for one expected event. */
private const val EVENT_WAIT_MS = 15_000L

/** Whole-test limit, so a hang fails the test instead of the run. */
private const val TEST_MS = 120_000L

private const val PASSWORD = "correct horse battery staple"

/** Runs a suspending [block] that must throw a [T], and returns what it threw. */
private suspend inline fun <reified T : Throwable> expectThrows(block: suspend () -> Unit): T {
    try {
        block()
    } catch (e: Throwable) {
        if (e is T) return e
        throw AssertionError("expected ${T::class.simpleName}, got $e", e)
    }
    throw AssertionError("expected ${T::class.simpleName}, nothing was thrown")
}

class SessionTest {
    private lateinit var server: Ternd
    private lateinit var dir: Path
    private val sessions = mutableListOf<Session>()

    @BeforeEach
    fun startServer() {
        startServer(tls = false)
    }

    private fun startServer(tls: Boolean) {
        val (ternd, temp) = Ternd.inTemp(tls)
        server = ternd
        dir = temp
        server.start()
    }

    @AfterEach
    fun stopEverything() {
        runBlocking { sessions.forEach { it.stop() } }
        sessions.forEach { it.close() }
        sessions.clear()
        server.close()
        dir.toFile().deleteRecursively()
    }

    private fun test(block: suspend () -> Unit) = runBlocking { withTimeout(TEST_MS) { block() } }

    private fun options() = SessionOptions(
        clientName = "tern-kotlin-tests/0.1",
        requestTimeoutMs = 5_000uL,
        // Short reconnect waits so a restarted server is found again quickly.
        reconnectMinMs = 50uL,
        reconnectMaxMs = 500uL,
        sendTimeoutMs = 30_000uL,
    )

    private suspend fun start(
        credentials: Credentials,
        storage: String,
        opts: SessionOptions = options(),
        addr: String = server.addr,
    ): Session {
        val session = Session.start(addr, credentials, dir.resolve(storage).toString(), opts)
        sessions += session
        return session
    }

    private suspend fun register(name: String): Session =
        start(Credentials.Register(name, PASSWORD, "$name-kotlin"), "$name.json")

    /** The first event for which [predicate] holds, skipping others, within [waitMs]. */
    private suspend fun Session.next(
        waitMs: Long = EVENT_WAIT_MS,
        predicate: (SessionEvent) -> Boolean,
    ): SessionEvent {
        val deadline = System.nanoTime() + waitMs * 1_000_000
        while (true) {
            val left = (deadline - System.nanoTime()) / 1_000_000
            check(left > 0) { "no matching event within $waitMs ms" }
            val event = nextEventWithin(left.toULong())
            if (event != null && predicate(event)) return event
        }
    }

    private fun SessionEvent.message(): Message? =
        ((this as? SessionEvent.Update)?.kind as? UpdateKind.NewMessage)?.message

    /** The next [count] messages the session receives (its own included), in order. */
    private suspend fun Session.messages(count: Int): List<Message> =
        List(count) { next { it.message() != null }.message()!! }

    private suspend fun direct(a: Session, b: Session): ULong {
        val other = a.lookupUser(b.account().username)
        assertEquals(b.account().userId, other.userId)
        return a.openDirect(other.userId).conversationId
    }

    // Proves register creates an account and a device, login adds a second device of the same
    // user, and a stored session resumes without credentials.
    @Test
    fun registerLoginAndResume() = test {
        val alice = register("alice")
        val account = alice.account()
        assertEquals("alice", account.username)
        assertTrue(account.userId > 0uL && account.deviceId > 0u)
        val first = alice.next { it is SessionEvent.Connected } as SessionEvent.Connected
        assertFalse(first.resumed)

        val laptop = start(Credentials.Login("alice", PASSWORD, "laptop"), "alice-laptop.json")
        assertEquals(account.userId, laptop.account().userId)
        assertNotEquals(account.deviceId, laptop.account().deviceId)
        val devices = laptop.listDevices()
        assertEquals(
            setOf(account.deviceId, laptop.account().deviceId),
            devices.map { it.deviceId }.toSet(),
        )
        assertTrue(devices.single { it.deviceId == laptop.account().deviceId }.current)

        alice.stop()
        val resumed = start(Credentials.Stored, "alice.json")
        assertEquals(account, resumed.account())
        val again = resumed.next { it is SessionEvent.Connected } as SessionEvent.Connected
        assertTrue(again.resumed)
    }

    // Proves a message sent by one session reaches the other with its sender, body and sequence
    // number, and that the sender's own session sees it too.
    @Test
    fun sendAndReceive() = test {
        val alice = register("alice")
        val bob = register("bob")
        val conversation = direct(alice, bob)

        val sent = alice.send(conversation, "hello Bob")
        assertEquals(conversation, sent.conversationId)
        assertEquals(1uL, sent.seq)
        assertEquals(32, sent.clientMsgId.length)

        val got = bob.messages(1).single()
        assertEquals("hello Bob", got.body)
        assertEquals(alice.account().userId, got.sender)
        assertEquals(sent.seq, got.seq)
        assertEquals(sent.messageId, got.messageId)
        assertEquals(sent.clientMsgId, got.clientMsgId)

        assertEquals(sent.messageId, alice.messages(1).single().messageId)
        assertEquals(listOf("hello Bob"), bob.history(conversation, 0uL, 0u).messages.map { it.body })
    }

    // Proves marking a message read sends the sender a read receipt naming the reader and seq.
    @Test
    fun readReceiptArrives() = test {
        val alice = register("alice")
        val bob = register("bob")
        val conversation = direct(alice, bob)
        val sent = alice.send(conversation, "did you read this?")
        val got = bob.messages(1).single()

        bob.markRead(conversation, got.seq)

        val receipt = alice.next {
            ((it as? SessionEvent.Update)?.kind as? UpdateKind.Receipt)?.kind == ReceiptKind.READ
        }.let { (it as SessionEvent.Update).kind as UpdateKind.Receipt }
        assertEquals(conversation, receipt.conversationId)
        assertEquals(bob.account().userId, receipt.userId)
        assertTrue(receipt.upToSeq >= sent.seq)
        val info = bob.getConversation(conversation)
        assertEquals(sent.seq, info.readSeq)
        assertEquals(0uL, info.unread)
    }

    // Proves a group of three: every member learns of it, sees every member's messages and its
    // rename; the creator is the owner.
    @Test
    fun groupOfThree() = test {
        val alice = register("alice")
        val bob = register("bob")
        val carol = register("carol")
        val ids = listOf(alice, bob, carol).map { it.account().userId }

        val group = alice.createGroup("trio", ids.drop(1))
        assertEquals(ConversationKind.GROUP, group.kind)
        assertEquals(ids.toSet(), group.members.map { it.userId }.toSet())
        assertEquals(Role.OWNER, group.members.single { it.userId == ids[0] }.role)

        for (member in listOf(bob, carol)) {
            val created = member.next {
                (it as? SessionEvent.Update)?.kind is UpdateKind.GroupCreated
            }.let { (it as SessionEvent.Update).kind as UpdateKind.GroupCreated }
            assertEquals(group.conversationId, created.conversationId)
            assertEquals("trio", created.name)
        }

        alice.send(group.conversationId, "hi both")
        carol.send(group.conversationId, "hi Alice")
        for (member in listOf(alice, bob, carol)) {
            val got = member.messages(2)
            assertEquals(listOf("hi both" to ids[0], "hi Alice" to ids[2]), got.map { it.body to it.sender })
            assertEquals(listOf(1uL, 2uL), got.map { it.seq })
        }

        bob.renameGroup(group.conversationId, "the three")
        val renamed = carol.next {
            (it as? SessionEvent.Update)?.kind is UpdateKind.GroupRenamed
        }.let { (it as SessionEvent.Update).kind as UpdateKind.GroupRenamed }
        assertEquals("the three", renamed.name)
        assertEquals(ids[1], renamed.actor)
    }

    // Proves the conversation list, presence and typing helpers: the list shows the direct chat
    // with its peer and newest message, a follower sees the other user online and then offline
    // once their session stops, and a typing notice reaches the other member.
    @Test
    fun conversationsPresenceAndTyping() = test {
        val alice = register("alice")
        val bob = register("bob")
        val conversation = direct(alice, bob)
        alice.send(conversation, "newest")

        val page = bob.listConversations(0uL, 0u)
        val summary = page.conversations.single()
        assertEquals(conversation, summary.conversationId)
        assertFalse(page.hasMore)
        assertEquals(alice.account().userId, summary.peer)
        assertEquals("newest", summary.lastMessage?.body)

        val now = bob.subscribePresence(listOf(alice.account().userId)).single()
        assertEquals(alice.account().userId, now.userId)
        assertTrue(now.online)

        alice.typing(conversation, true)
        val typing = bob.next { it is SessionEvent.Typing } as SessionEvent.Typing
        assertEquals(Triple(conversation, alice.account().userId, true), Triple(typing.conversationId, typing.userId, typing.active))

        alice.stop()
        val offline = bob.next { (it as? SessionEvent.PresenceChanged)?.presence?.online == false }
        assertEquals(alice.account().userId, (offline as SessionEvent.PresenceChanged).presence.userId)
    }

    /** Keeps every progress report (called on a thread of the library). */
    private class Recorder : TransferProgress {
        val reports = java.util.Collections.synchronizedList(mutableListOf<Pair<ULong, ULong>>())
        override fun onProgress(doneBytes: ULong, totalBytes: ULong) {
            reports += doneBytes to totalBytes
        }
    }

    private fun checkProgress(reports: List<Pair<ULong, ULong>>, total: ULong) {
        assertTrue(reports.size >= 3, "$reports")
        assertEquals(0uL to total, reports.first())
        assertEquals(total to total, reports.last())
        val done = reports.map { it.first }
        assertEquals(done.sorted(), done)
        assertTrue(reports.all { it.second == total })
    }

    // Proves a media round trip: an upload in several chunks reports its progress, the media
    // rides on a message, and the other member downloads the same bytes, with progress; the file
    // variants round-trip too.
    @Test
    fun mediaRoundTripWithProgress() = test {
        val alice = register("alice")
        val bob = register("bob")
        val conversation = direct(alice, bob)
        val data = Random(7).nextBytes(600 * 1024 + 123)
        val total = data.size.toULong()

        val upload = Recorder()
        val info = alice.upload(data, "application/octet-stream", upload)
        assertEquals(total, info.size)
        assertTrue(info.complete)
        assertEquals(64, info.sha256.length)
        checkProgress(upload.reports.toList(), total)

        alice.sendWithAttachments(conversation, "a file", listOf(info.mediaId))
        val got = bob.messages(1).single()
        assertEquals(listOf(info.mediaId to total), got.attachments.map { it.mediaId to it.size })

        val reports = java.util.Collections.synchronizedList(mutableListOf<Pair<ULong, ULong>>())
        val downloaded = bob.download(info.mediaId, progress { done, all -> reports += done to all })
        assertArrayEquals(data, downloaded)
        checkProgress(reports.toList(), total)

        // The file variants: from a file and back into one.
        val source = dir.resolve("photo.bin").toFile().apply { writeBytes(data.copyOf(1000)) }
        val fromFile = alice.uploadFile(source.path, "image/jpeg", null)
        assertEquals(1000uL to "image/jpeg", fromFile.size to fromFile.mime)
        val target = dir.resolve("copy.bin").toFile()
        alice.downloadFile(fromFile.mediaId, target.path, null)
        assertArrayEquals(data.copyOf(1000), target.readBytes())
    }

    // Proves errors arrive typed: a wrong password is ClientException.Server with
    // BAD_CREDENTIALS, a conversation the caller is not in is NOT_FOUND, a member who is not an
    // admin gets FORBIDDEN, and resuming with no stored session is a usage error.
    @Test
    fun typedErrors() = test {
        val alice = register("alice")
        val bob = register("bob")
        val carol = register("carol")
        val conversation = direct(alice, bob)

        val wrong = expectThrows<ClientException.Server> {
            start(Credentials.Login("alice", "not the password", "x"), "intruder.json")
        }
        assertEquals(ErrorCode.BAD_CREDENTIALS, wrong.code)
        assertEquals(12.toUShort(), wrong.codeValue)

        val outsider = expectThrows<ClientException.Server> { carol.send(conversation, "let me in") }
        assertEquals(ErrorCode.NOT_FOUND, outsider.code)
        val reader = expectThrows<ClientException.Server> { carol.history(conversation, 0uL, 0u) }
        assertEquals(ErrorCode.NOT_FOUND, reader.code)

        val group = alice.createGroup("club", listOf(bob.account().userId))
        val member = expectThrows<ClientException.Server> {
            bob.addMembers(group.conversationId, listOf(carol.account().userId))
        }
        assertEquals(ErrorCode.FORBIDDEN, member.code)

        expectThrows<ClientException.Usage> { start(Credentials.Stored, "nobody.json") }
    }

    // Proves a session survives the server being killed mid-conversation and started again on
    // the same data and port: it reconnects by itself, sends queued while the server was down go
    // out once, and the receiver gets every message exactly once, in order.
    @Test
    fun serverRestartLosesAndDoublesNothing() = test {
        val alice = register("alice")
        val bob = register("bob")
        val conversation = direct(alice, bob)
        val bodies = List(9) { "message $it" }

        for (body in bodies.take(3)) alice.send(conversation, body)
        assertEquals(bodies.take(3), bob.messages(3).map { it.body })

        server.kill()
        alice.next { it is SessionEvent.Disconnected }
        val queued = bodies.subList(3, 6).map { alice.queueSend(conversation, it) }
        assertEquals(3uL, alice.outboxLen())
        server.restart()

        val sent = List(3) { (alice.next { it is SessionEvent.Sent } as SessionEvent.Sent).sent }
        // Confirmations may come in any order; the messages were stored in the order queued.
        assertEquals(queued, sent.sortedBy { it.seq }.map { it.clientMsgId })
        assertEquals(listOf(4uL, 5uL, 6uL), sent.map { it.seq }.sorted())
        assertEquals(0uL, alice.outboxLen())
        for (body in bodies.drop(6)) alice.send(conversation, body)

        assertEquals(bodies.drop(3), bob.messages(6).map { it.body })
        val page = bob.history(conversation, 0uL, 0u)
        assertEquals(bodies, page.messages.map { it.body })
        assertEquals((1uL..9uL).toList(), page.messages.map { it.seq })
        assertEquals(9, page.messages.map { it.messageId }.toSet().size)
        // Nothing more arrives: no message was stored or delivered twice.
        val extra = bob.nextEventWithin(500uL)
        assertTrue(extra?.message() == null, "$extra")
    }

    // Proves events arrive in order: a burst of queued sends reaches the receiver with gapless
    // user_seq and seq, bodies in the order sent, and every send is confirmed with the seq of its
    // place in the queue.
    @Test
    fun eventsArriveInOrder() = test {
        val alice = register("alice")
        val bob = register("bob")
        val conversation = direct(alice, bob)
        val count = 40
        val keys = List(count) { alice.queueSend(conversation, "#$it") }

        val updates = List(count) { bob.next { e -> e.message() != null } as SessionEvent.Update }
        assertEquals(List(count) { "#$it" }, updates.map { it.message()!!.body })
        assertEquals((1uL..count.toULong()).toList(), updates.map { it.message()!!.seq })
        val first = updates.first().userSeq
        assertEquals((first until first + count.toULong()).toList(), updates.map { it.userSeq })

        val confirmed = alice.events().filterIsInstance<SessionEvent.Sent>().take(count).toList()
        // Replies to pipelined sends may be confirmed in any order; what the server stored is in
        // the order queued.
        val bySeq = confirmed.map { it.sent }.sortedBy { it.seq }
        assertEquals(keys, bySeq.map { it.clientMsgId })
        assertEquals((1uL..count.toULong()).toList(), bySeq.map { it.seq })
    }

    // Proves TLS options: a session connects over TLS trusting the server's self-signed
    // certificate from its PEM file, and fails with an I/O error trusting only the web roots.
    @Test
    fun tls() = test {
        server.close()
        dir.toFile().deleteRecursively()
        startServer(tls = true)
        val pem = server.dataDir.resolve("tls/self-signed.pem").toString()
        val trusted = options().apply {
            tls = TlsOptions("127.0.0.1", rootPemFiles = listOf(pem), webRoots = false)
        }
        val credentials = Credentials.Register("tess", PASSWORD, "tls")
        val tess = start(credentials, "tess.json", trusted, server.tlsAddr)
        assertEquals("tess", tess.account().username)
        val untrusted = options().apply { tls = TlsOptions("127.0.0.1") }
        expectThrows<ClientException.Io> { start(credentials, "other.json", untrusted, server.tlsAddr) }
    }
}
