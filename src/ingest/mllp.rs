//! MLLP listener (HL7 v2 "Minimal Lower Layer Protocol": 0x0B message 0x1C
//! 0x0D). Many messages per connection, frames split over reads or several in
//! one read (`translate::hl7v2::mllp::MllpDecoder`), one ACK per message, in
//! order. Bytes outside a frame are answered with one AR ACK and the decoder
//! resynchronises on the next start byte, so the connection stays usable.
//! A rejected message stores nothing (the write pipeline's transaction).
//!
//! # Who is sending (issue 7; IHE ITI TF-2 Appendix C, "MLLP over TLS" as in
//! the IHE ATNA secure node's authenticated connections)
//! MLLP has no authentication of its own, so the transport is the identity:
//! * without `[server.tls]` the listener takes plain MLLP on a loopback
//!   address only (`server::start_full` refuses any other): the sender is
//!   an integration engine on the gateway's own host (client
//!   `mllp-loopback`);
//! * with `[server.tls]` it is MLLP over TLS (the HTTPS certificate,
//!   reloaded on SIGHUP), and with `[auth]` the sender is the registered
//!   client whose member's `client_cert_sha256` names the certificate it
//!   presented. A connection without such a certificate, or of a member
//!   whose role may not send HL7 v2, gets an AR ACK for every message and
//!   nothing is stored. Off loopback this is the only way (`[auth]` and
//!   `client_ca` required). Members other than integration engines and
//!   operators send only for institutions mapped to themselves
//!   (`Caller::may_send_for`).
//!
//! With `[auth]` every message leaves an AuditEvent (interaction `hl7v2`,
//! path `MLLP`): in the message's own transaction when stored, before the
//! ACK leaves otherwise; an ACK is sent only after its audit record is
//! durable.

use super::hl7v2::{ack_control_id, handle_for, v2_now, Hl7Config};
use crate::auth::audit::AccessRecord;
use crate::auth::policy::Interaction;
use crate::auth::{Caller, MemberType};
use crate::pipeline::audit::AuditSink;
use crate::services::Services;
use crate::translate::hl7v2::{build_ack, encode_frame, AckCode, AckError, InboundHeader, MessageBuf, MllpDecoder, Severity};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What every connection of a listener shares.
#[derive(Clone)]
pub struct MllpContext {
    pub services: Services,
    pub hl7: Arc<Hl7Config>,
    /// `[auth]`: callers are identified and every message audited
    pub auth: Option<Arc<crate::auth::token::Authenticator>>,
    pub audit: Option<AuditSink>,
}

/// The client a loopback listener's messages are attributed to.
pub const LOOPBACK_CLIENT: &str = "mllp-loopback";

/// The client a refused TLS connection's messages are audited under.
pub const UNIDENTIFIED_CLIENT: &str = "mllp-unidentified";

/// An integration engine known only by the transport (`client_id`).
fn transport_caller(client_id: &str) -> Caller {
    Caller { client_id: client_id.into(), member: None, member_type: MemberType::IntegrationEngine, scopes: vec![], purpose_of_use: None }
}

fn loopback_caller() -> Caller {
    transport_caller(LOOPBACK_CLIENT)
}

/// Only ever audited, never allowed to write.
fn unidentified() -> Caller {
    transport_caller(UNIDENTIFIED_CLIENT)
}

/// The sender of a TLS connection: the registered client of the
/// certificate, when its role may send HL7 v2 (the reason otherwise).
pub fn tls_caller(auth: &crate::auth::token::Authenticator, fingerprint: Option<&str>) -> Result<Caller, String> {
    let Some(fp) = fingerprint else {
        return Err("MLLP over TLS needs a client certificate registered for a member (client_cert_sha256)".into());
    };
    let Some(c) = auth.client_by_cert(fp) else {
        return Err("the client certificate is not registered for any member (client_cert_sha256)".into());
    };
    if !auth.settings.policy.allows(c.member_type, Interaction::Hl7v2, None) {
        return Err(format!("the role of Organization/{} ({}) may not send HL7 v2", c.member, c.member_type.as_str()));
    }
    Ok(Caller {
        client_id: c.client_id.clone(),
        member: Some(c.member.clone()),
        member_type: c.member_type,
        scopes: c.scopes.iter().map(|s| s.to_string_v2()).collect(),
        purpose_of_use: None,
    })
}

/// Plain MLLP on a loopback address: accept connections until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: MllpContext) {
    loop {
        let Ok((sock, peer)) = listener.accept().await else { continue };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(sock, &ctx, Ok(loopback_caller())).await {
                tracing::debug!(%peer, error = %e, "mllp connection closed");
            }
        });
    }
}

/// MLLP over TLS: each connection's handshake uses the current
/// configuration (`tls`, replaced on SIGHUP by the server).
pub async fn serve_tls(listener: TcpListener, ctx: MllpContext, tls: Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let cfg = tls.read().unwrap_or_else(|e| e.into_inner()).clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let stream = match tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "mllp TLS handshake failed");
                    return;
                }
            };
            let fp = crate::auth::token::peer_fingerprint(stream.get_ref().1);
            let caller = match &ctx.auth {
                Some(a) => tls_caller(a, fp.as_deref()),
                None => Ok(loopback_caller()), // a development server: loopback only
            };
            if let Err(why) = &caller {
                tracing::warn!(%peer, reason = %why, "mllp sender refused");
            }
            if let Err(e) = connection(stream, &ctx, caller).await {
                tracing::debug!(%peer, error = %e, "mllp connection closed");
            }
        });
    }
}

/// The audit record of one message from `caller`.
fn record(caller: &Caller) -> AccessRecord {
    AccessRecord {
        caller: caller.clone(),
        interaction: Interaction::Hl7v2,
        rtype: None,
        data: vec![],
        patients: vec![],
        query: None,
        status: 0,
        failure: None,
        operation: Some("MLLP".into()),
        bundle: false,
        relationships: vec![],
    }
}

/// Answer one framed message; `None` when its refusal could not be audited
/// (the connection is closed without an ACK, so the sender retries).
async fn answer(ctx: &MllpContext, caller: &Result<Caller, String>, msg: &[u8]) -> Option<String> {
    let rec = ctx.audit.as_ref().map(|_| match caller {
        Ok(c) => record(c),
        Err(_) => record(&unidentified()),
    });
    let (ack, status, failure) = match caller {
        Err(why) => {
            let header = MessageBuf::from_bytes(msg).ok().map(|b| InboundHeader::from_message(&b.message())).unwrap_or_default();
            let ack = build_ack(&header, AckCode::AR, &ack_control_id(), &v2_now(), &[AckError::new(207, Severity::Error).message(why.clone())]);
            (ack, 403, Some(why.clone()))
        }
        Ok(c) => {
            let out = handle_for(&ctx.services, &ctx.hl7, msg, Some(c), rec.clone()).await;
            let status = out.http_status();
            if status < 300 {
                return Some(out.ack); // audited in the message's transaction
            }
            let failure = out.ack.split('\r').find(|s| s.starts_with("ERR")).map(|s| s.chars().take(200).collect());
            (out.ack, status, failure)
        }
    };
    if let (Some(sink), Some(mut rec)) = (&ctx.audit, rec) {
        rec.status = status;
        rec.failure = failure;
        if let Err(e) = sink.record(rec).await {
            tracing::error!(error = %e, "audit record of an MLLP message could not be written; closing the connection");
            return None;
        }
    }
    Some(ack)
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, ctx: &MllpContext, caller: Result<Caller, String>) -> std::io::Result<()> {
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
                Ok(msg) => match answer(ctx, &caller, &msg).await {
                    Some(a) => a,
                    None => return Ok(()),
                },
                Err(e) => build_ack(
                    &InboundHeader::default(),
                    AckCode::AR,
                    &ack_control_id(),
                    &v2_now(),
                    &[AckError::new(100, Severity::Error).message(format!("MLLP framing: {e}"))],
                ),
            };
            sock.write_all(&encode_frame(ack.as_bytes())).await?;
            sock.flush().await?;
        }
    }
}
