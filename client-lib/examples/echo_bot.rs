//! An echo bot: logs in (or registers) as a user and answers every message it receives with the
//! same text, through a [`Session`] that survives restarts of the server and of the bot.
//!
//! ```sh
//! cargo run -p tern-client --example echo_bot -- 127.0.0.1:7400 echo password123 echo.json
//! ```

use std::sync::Arc;

use tern_client::protocol::UpdateKind;
use tern_client::{Credentials, FileStorage, Session, SessionEvent, SessionOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, username, password, state] = args.as_slice() else {
        eprintln!("usage: echo_bot ADDR USERNAME PASSWORD STATE_FILE");
        std::process::exit(2);
    };
    let storage = Arc::new(FileStorage::open(state)?);
    let credentials = Credentials::Register {
        username: username.clone(),
        password: password.clone(),
        device_name: "echo bot".into(),
    };
    let options = SessionOptions::new("tern-echo-bot/1.0");
    let session = match Session::start(addr.as_str(), credentials, storage.clone(), options).await {
        Ok(session) => session,
        // Registered before, on another state file: log in as a new device instead.
        Err(e) if e.server_code() == Some(tern_client::protocol::ErrorCode::USERNAME_TAKEN) => {
            let credentials = Credentials::Login {
                username: username.clone(),
                password: password.clone(),
                device_name: "echo bot".into(),
            };
            let options = SessionOptions::new("tern-echo-bot/1.0");
            Session::start(addr.as_str(), credentials, storage, options).await?
        }
        Err(e) => return Err(e.into()),
    };
    let me = session.client().await?.lookup_user(username).await?.user_id;
    println!("echoing as {username} ({me})");
    while let Some(event) = session.next_event().await {
        match event {
            SessionEvent::Update(update) => {
                if let UpdateKind::Message(message) = update.kind {
                    if message.sender != me {
                        session.queue_send(message.conversation_id, &message.body)?;
                    }
                }
            }
            SessionEvent::Disconnected { reason } => {
                println!("disconnected ({reason}); reconnecting")
            }
            SessionEvent::Connected { resumed } => println!("connected (resumed: {resumed})"),
            SessionEvent::LoggedOut { error } => return Err(error.into()),
            _ => {}
        }
    }
    Ok(())
}
