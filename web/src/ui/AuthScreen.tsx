// The sign-in screen: log in or create an account on a server, whose address can be changed.

import { useState } from "preact/hooks";
import { type Credentials, isServerUrl } from "../account";
import { Spinner } from "./bits";
import { ChatIcon } from "./icons";

const USERNAME_RE = /^[a-z0-9_.-]{3,32}$/;
const PASSWORD_BYTES_MIN = 8;

export function AuthScreen(props: {
  server: string;
  notice: string;
  onSubmit: (server: string, creds: Credentials) => Promise<string | null>;
}) {
  const [mode, setMode] = useState<"login" | "register">("login");
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [server, setServer] = useState(props.server);
  const [editServer, setEditServer] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");

  async function submit(e: Event) {
    e.preventDefault();
    const name = username.trim().toLowerCase();
    if (!isServerUrl(server)) return setError("The server address starts with ws:// or wss://.");
    if (mode === "register") {
      if (!USERNAME_RE.test(name)) {
        return setError("Usernames have 3 to 32 characters: letters a–z, digits, and _ . -");
      }
      if (new TextEncoder().encode(password).length < PASSWORD_BYTES_MIN) {
        return setError("Passwords have at least 8 characters.");
      }
    } else if (!name || !password) {
      return setError("Enter your username and password.");
    }
    setBusy(true);
    setError("");
    const failure = await props.onSubmit(server, { kind: mode, username: name, password });
    // On success this screen is gone; only a failure comes back here.
    if (failure !== null) {
      setBusy(false);
      setError(failure);
    }
  }

  const registering = mode === "register";
  return (
    <main class="auth">
      <form class="auth-card" onSubmit={submit} data-testid="auth-form">
        <div class="auth-brand">
          <span class="auth-logo">
            <ChatIcon size={26} />
          </span>
          <h1>Tern</h1>
        </div>
        <p class="auth-sub">{registering ? "Create an account to start chatting." : "Sign in to your account."}</p>
        {props.notice ? <p class="auth-notice">{props.notice}</p> : null}
        <div class="tabs" role="tablist">
          <button
            type="button"
            role="tab"
            aria-selected={!registering}
            class={!registering ? "tab active" : "tab"}
            onClick={() => setMode("login")}
            data-testid="auth-mode-login"
          >
            Sign in
          </button>
          <button
            type="button"
            role="tab"
            aria-selected={registering}
            class={registering ? "tab active" : "tab"}
            onClick={() => setMode("register")}
            data-testid="auth-mode-register"
          >
            Create account
          </button>
        </div>
        <label class="field">
          <span>Username</span>
          <input
            value={username}
            onInput={(e) => setUsername(e.currentTarget.value)}
            autocomplete="username"
            autocapitalize="none"
            spellcheck={false}
            required
            data-testid="auth-username"
          />
        </label>
        <label class="field">
          <span>Password</span>
          <input
            type="password"
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
            autocomplete={registering ? "new-password" : "current-password"}
            required
            data-testid="auth-password"
          />
        </label>
        {editServer ? (
          <label class="field">
            <span>Server</span>
            <input
              value={server}
              onInput={(e) => setServer(e.currentTarget.value.trim())}
              spellcheck={false}
              data-testid="auth-server"
            />
          </label>
        ) : (
          <p class="auth-server">
            Server <code>{server}</code>{" "}
            <button type="button" class="link" onClick={() => setEditServer(true)} data-testid="auth-server-edit">
              Change
            </button>
          </p>
        )}
        {error ? (
          <p class="form-error" role="alert" data-testid="auth-error">
            {error}
          </p>
        ) : null}
        <button class="primary wide" type="submit" disabled={busy} data-testid="auth-submit">
          {busy ? <Spinner /> : null}
          {registering ? "Create account" : "Sign in"}
        </button>
      </form>
    </main>
  );
}
