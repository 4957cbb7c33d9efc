/*
 * A real ternd for the tests: started on port 0 in a temporary data directory, killed (SIGKILL)
 * and started again on the same data and port when a test asks.
 *
 * The binary is $TERND_BIN, else $CARGO_TARGET_DIR/debug/ternd (the workspace's CI build), else
 * /work/bin/ternd.
 */
package chat.tern

import java.io.File
import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/** How long a server has to print its `listening` line. */
private const val SERVER_START_MS = 20_000L

class Ternd(val dataDir: Path, private val log: File, private val tls: Boolean = false) : AutoCloseable {
    private var process: Process? = null

    /** The `key=address` pairs of the `listening` line. */
    var listening: Map<String, String> = emptyMap()
        private set

    val addr: String get() = listening.getValue("tcp")
    val tlsAddr: String get() = listening.getValue("tls")
    val port: Int get() = addr.substringAfterLast(':').toInt()

    /** Starts the server on [port] (0: any free one) and returns its TCP address. */
    fun start(port: Int = 0): String {
        val args = mutableListOf(
            binary(), "--data-dir", dataDir.toString(),
            "--listen", "127.0.0.1:$port",
            "--ws-listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0",
            "--password-iterations", "1000",
        )
        if (tls) args += listOf("--tls-self-signed", "--tls-listen", "127.0.0.1:0")
        val started = ProcessBuilder(args)
            .redirectErrorStream(false)
            .redirectError(ProcessBuilder.Redirect.appendTo(log))
            .redirectInput(ProcessBuilder.Redirect.from(File("/dev/null")))
            .start()
        process = started
        val lines = LinkedBlockingQueue<String>()
        // Reads stdout to its end so the server never blocks on a full pipe.
        Thread {
            started.inputStream.bufferedReader().useLines { all -> all.forEach { lines.put(it) } }
            lines.put(END)
        }.apply { isDaemon = true }.start()
        val deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(SERVER_START_MS)
        while (System.nanoTime() < deadline) {
            val left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()).coerceAtLeast(1)
            val line = lines.poll(left, TimeUnit.MILLISECONDS) ?: break
            if (line === END) break
            if (line.startsWith("listening ")) {
                listening = line.split(' ').drop(1).filter { '=' in it }
                    .associate { it.substringBefore('=') to it.substringAfter('=') }
                return addr
            }
        }
        kill()
        error("ternd did not start; its log:\n" + log.readText().takeLast(4000))
    }

    /** Kills the server at once, as a crash would. */
    fun kill() {
        process?.let {
            it.destroyForcibly()
            it.waitFor(10, TimeUnit.SECONDS)
        }
    }

    /** Kills the server and starts it again on the same data directory and port. */
    fun restart(): String {
        val samePort = port
        kill()
        // The port is free once the process is gone; a bind may still race the kernel's
        // clean-up, so a few attempts are allowed.
        var last: Throwable? = null
        repeat(5) {
            try {
                return start(samePort)
            } catch (e: IllegalStateException) {
                last = e
                Thread.sleep(200)
            }
        }
        throw IllegalStateException("ternd did not restart on port $samePort", last)
    }

    override fun close() {
        process?.let {
            it.destroy()
            if (!it.waitFor(10, TimeUnit.SECONDS)) kill()
        }
    }

    companion object {
        private val END = String(charArrayOf('\u0000'))

        fun binary(): String {
            System.getenv("TERND_BIN")?.takeIf { it.isNotEmpty() }?.let { return it }
            val target = System.getenv("CARGO_TARGET_DIR")?.takeIf { it.isNotEmpty() }
                ?: (System.getProperty("user.home") + "/.cache/tern/target")
            val built = File(target, "debug/ternd")
            return if (built.exists()) built.path else "/work/bin/ternd"
        }

        fun inTemp(tls: Boolean = false): Pair<Ternd, Path> {
            val dir = Files.createTempDirectory("tern-kotlin-test")
            return Ternd(dir.resolve("data"), dir.resolve("ternd.log").toFile(), tls) to dir
        }
    }
}
