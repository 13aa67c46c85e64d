//! Calls to one member over a kept connection (`keel::grpc::client`), each bounded by a
//! timeout, with the failure split the history needs: a request that was never sent
//! (no connection) did not happen; one that was sent and then failed may have.

use keel::grpc::client::{self, CallError, Conn};
use prost::Message;
use std::net::SocketAddr;
use std::time::Duration;

/// How a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made: the request never left.
    NotSent(String),
    /// The server answered with a gRPC status (code, message).
    Status(u32, String),
    /// The connection broke after the request may have been sent.
    Transport(String),
    /// No answer within the timeout.
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotSent(e) => write!(f, "not sent: {e}"),
            Failure::Status(c, m) => write!(f, "status {c}: {m}"),
            Failure::Transport(e) => write!(f, "transport: {e}"),
            Failure::Timeout => f.write_str("timed out"),
        }
    }
}

pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// A member's client address and the connection to it, if one is open.
pub struct Endpoint {
    pub addr: SocketAddr,
    conn: Option<Conn>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, conn: None }
    }

    /// Forgets the connection (the next call dials again).
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// The open connection, dialling if there is none.
    pub async fn conn(&mut self) -> Result<Conn, Failure> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let addr = self.addr;
        let dialled =
            glommio::timer::timeout(
                CONNECT_TIMEOUT,
                async move { Ok(client::connect(addr).await) },
            )
            .await
            .map_err(|_| Failure::NotSent(format!("connect {addr}: timed out")))?;
        let c = dialled.map_err(|e| Failure::NotSent(format!("connect {addr}: {e}")))?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// One unary call within `timeout`. A transport failure or timeout drops the
    /// connection, so the next call starts afresh.
    pub async fn unary<M: Message + 'static, R: Message + Default + 'static>(
        &mut self,
        path: &'static str,
        msg: M,
        timeout: Duration,
    ) -> Result<R, Failure> {
        let conn = self.conn().await?;
        let res = glommio::timer::timeout(timeout, async move {
            Ok(client::unary::<M, R>(&conn, path, &msg).await)
        })
        .await;
        match res {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(CallError::Status(c, m))) => Err(Failure::Status(c, m)),
            Ok(Err(CallError::Transport(e))) => {
                self.conn = None;
                Err(Failure::Transport(e))
            }
            Err(_) => {
                self.conn = None;
                Err(Failure::Timeout)
            }
        }
    }
}
