//! Sends one message and waits until the recipient has read it: the three ticks of a chat app
//! (sent, delivered, read) from the receipts in the sender's update log.
//!
//! ```sh
//! cargo run -p tern-client --example send_and_wait_read -- 127.0.0.1:7400 alice password123 bob "hello"
//! ```

use std::sync::Arc;

use tern_client::protocol::types::ReceiptKind;
use tern_client::protocol::UpdateKind;
use tern_client::{Credentials, MemoryStorage, Session, SessionEvent, SessionOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, username, password, to, text] = args.as_slice() else {
        eprintln!("usage: send_and_wait_read ADDR USERNAME PASSWORD TO_USERNAME TEXT");
        std::process::exit(2);
    };
    let credentials = Credentials::Login {
        username: username.clone(),
        password: password.clone(),
        device_name: "example".into(),
    };
    let storage = Arc::new(MemoryStorage::new());
    let session = Session::start(
        addr.as_str(),
        credentials,
        storage,
        SessionOptions::new("example/1.0"),
    )
    .await?;
    let client = session.client().await?;
    let peer = client.lookup_user(to).await?;
    let chat = client.open_direct(peer.user_id).await?;
    let sent = session.send(chat.conversation_id, text).await?;
    println!("✓ sent as message {} (seq {})", sent.message_id, sent.seq);
    while let Some(event) = session.next_event().await {
        let SessionEvent::Update(update) = event else {
            continue;
        };
        let UpdateKind::Receipt(receipt) = update.kind else {
            continue;
        };
        if receipt.conversation_id != chat.conversation_id
            || receipt.user_id != peer.user_id
            || receipt.up_to_seq < sent.seq
        {
            continue;
        }
        match receipt.kind {
            ReceiptKind::Delivered => println!("✓✓ delivered"),
            ReceiptKind::Read => {
                println!("✓✓ read");
                break;
            }
        }
    }
    session.close().await;
    Ok(())
}
