//! MLLP listener (HL7 v2 "Minimal Lower Layer Protocol": 0x0B message 0x1C
//! 0x0D). Many messages per connection, frames split over reads or several in
//! one read (`translate::hl7v2::mllp::MllpDecoder`), one ACK per message, in
//! order. Bytes outside a frame are answered with one AR ACK and the decoder
//! resynchronises on the next start byte, so the connection stays usable.
//! A rejected message stores nothing (the write pipeline's transaction).

use super::hl7v2::{ack_control_id, handle, v2_now, Hl7Config};
use crate::services::Services;
use crate::translate::hl7v2::{build_ack, encode_frame, AckCode, AckError, InboundHeader, MllpDecoder, Severity};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accept connections until the task is dropped.
pub async fn serve(listener: TcpListener, services: Services, cfg: Arc<Hl7Config>) {
    loop {
        let Ok((sock, peer)) = listener.accept().await else { continue };
        let (services, cfg) = (services.clone(), cfg.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(sock, &services, &cfg).await {
                tracing::debug!(%peer, error = %e, "mllp connection closed");
            }
        });
    }
}

async fn connection(mut sock: TcpStream, services: &Services, cfg: &Hl7Config) -> std::io::Result<()> {
    let mut dec = MllpDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        dec.push(&buf[..n]);
        while let Some(frame) = dec.next_frame() {
            let ack = match frame {
                Ok(msg) => handle(services, cfg, &msg).await.ack,
                Err(e) => build_ack(
                    &InboundHeader::default(),
                    AckCode::AR,
                    &ack_control_id(),
                    &v2_now(),
                    &[AckError::new(100, Severity::Error).message(format!("MLLP framing: {e}"))],
                ),
            };
            sock.write_all(&encode_frame(ack.as_bytes())).await?;
        }
    }
}
