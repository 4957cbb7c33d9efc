// The root: signs in or resumes the saved session, then shows the chat screen. A saved session is
// resumed after a reload even while the server is down: the app keeps trying with back-off and
// shows the chats as soon as the SDK has a session.

import type { Session } from "@tern/client";
import { useEffect, useState } from "preact/hooks";
import {
  type Credentials,
  describeError,
  initialServer,
  isSignedOut,
  rememberAccount,
  resume,
  savedAccount,
  signIn,
} from "../account";
import { ChatStore } from "../store";
import { AuthScreen } from "./AuthScreen";
import { Spinner, StoreContext } from "./bits";
import { ChatScreen } from "./ChatScreen";

/** Tries to resume a saved session this many times before asking the user what to do. */
const RESUME_ATTEMPTS_MAX = 40;
const RESUME_BACKOFF_MS_MAX = 10_000;

type Phase =
  | { kind: "auth"; notice: string }
  | { kind: "resuming"; server: string; username: string; error: string; gaveUp: boolean; round: number }
  | { kind: "chat"; store: ChatStore };

function initialPhase(): Phase {
  const saved = savedAccount(location.search);
  if (!saved) return { kind: "auth", notice: "" };
  return { kind: "resuming", server: saved.server, username: saved.username, error: "", gaveUp: false, round: 0 };
}

export function App() {
  const [phase, setPhase] = useState<Phase>(initialPhase);

  /** The server dropped this device: what the app kept for it goes, and the sign-in form shows. */
  const signedOutElsewhere = (store: ChatStore) => {
    store.stop();
    store.forget();
    rememberAccount(null);
    void store.session.close().catch(() => undefined);
    setPhase({ kind: "auth", notice: "This device was signed out. Please sign in again." });
  };
  const begin = (session: Session) => {
    const store = new ChatStore(session);
    store.onLoggedOut = () => signedOutElsewhere(store);
    store.start();
    setPhase({ kind: "chat", store });
  };

  const resumeRound = phase.kind === "resuming" ? phase.round : -1;
  useEffect(() => {
    if (phase.kind !== "resuming") return;
    const { server } = phase;
    let cancelled = false;
    let timer: ReturnType<typeof setTimeout> | null = null;
    const attempt = async (n: number): Promise<void> => {
      try {
        const session = await resume(server);
        if (cancelled) {
          await session.close();
          return;
        }
        begin(session);
      } catch (e) {
        if (cancelled) return;
        if (isSignedOut(e)) {
          rememberAccount(null);
          setPhase({ kind: "auth", notice: "Your session has ended. Please sign in again." });
          return;
        }
        const gaveUp = n + 1 >= RESUME_ATTEMPTS_MAX;
        setPhase((p) => (p.kind === "resuming" ? { ...p, error: describeError(e), gaveUp } : p));
        if (gaveUp) return;
        const backoff = Math.min(RESUME_BACKOFF_MS_MAX, 500 * 2 ** n);
        timer = setTimeout(() => void attempt(n + 1), backoff / 2 + Math.random() * (backoff / 2));
      }
    };
    void attempt(0);
    return () => {
      cancelled = true;
      if (timer !== null) clearTimeout(timer);
    };
  }, [resumeRound]);

  async function submit(server: string, creds: Credentials): Promise<string | null> {
    try {
      begin(await signIn(server, creds));
      return null;
    } catch (e) {
      return describeError(e);
    }
  }

  async function logout(store: ChatStore): Promise<void> {
    store.stop();
    try {
      await store.session.logout();
    } catch {
      // Offline: the token is dropped here anyway; the device stays listed until revoked elsewhere.
      await store.session.close().catch(() => undefined);
    }
    store.forget();
    rememberAccount(null);
    history.replaceState(null, "", location.pathname + location.search);
    setPhase({ kind: "auth", notice: "" });
  }

  if (phase.kind === "auth") {
    return <AuthScreen server={initialServer(location.search)} notice={phase.notice} onSubmit={submit} />;
  }
  if (phase.kind === "resuming") {
    return (
      <main class="auth">
        <div class="auth-card center" data-testid="resuming">
          <Spinner />
          <p>
            Connecting to <code>{phase.server}</code> as <strong>{phase.username}</strong>…
          </p>
          {phase.error ? <p class="muted small">{phase.error}</p> : null}
          {phase.gaveUp ? (
            <div class="row gap">
              <button class="primary" onClick={() => setPhase({ ...phase, error: "", gaveUp: false, round: phase.round + 1 })}>
                Try again
              </button>
              <button
                onClick={() => {
                  rememberAccount(null);
                  setPhase({ kind: "auth", notice: "" });
                }}
              >
                Sign in again
              </button>
            </div>
          ) : null}
        </div>
      </main>
    );
  }
  return (
    <StoreContext.Provider value={phase.store}>
      <ChatScreen onLogout={() => void logout(phase.store)} />
    </StoreContext.Provider>
  );
}
