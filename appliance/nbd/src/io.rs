//! Byte streams (TCP, unix, TLS over either) and socket waits with timeouts.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::NbdError;

/// Any bidirectional byte stream an NBD session can run on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A boxed stream, so that plain and TLS sessions share one code path.
pub type BoxIo = Box<dyn Io>;

/// Fills `buf`, or fails after `t`.
pub(crate) async fn read_exact<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    t: Duration,
    during: &'static str,
) -> Result<(), NbdError> {
    match tokio::time::timeout(t, r.read_exact(buf)).await {
        Err(_) => Err(NbdError::Timeout { during, after: t }),
        Ok(Err(e)) => Err(NbdError::io(during, e)),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Reads exactly `n` bytes into a new vector, or fails after `t`.
pub(crate) async fn read_vec<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    n: usize,
    t: Duration,
    during: &'static str,
) -> Result<Vec<u8>, NbdError> {
    let mut v = vec![0u8; n];
    read_exact(r, &mut v, t, during).await?;
    Ok(v)
}

/// Writes all of `parts` and flushes, or fails after `t`.
pub(crate) async fn write_all<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    parts: &[&[u8]],
    t: Duration,
    during: &'static str,
) -> Result<(), NbdError> {
    let fut = async {
        for p in parts {
            w.write_all(p).await?;
        }
        w.flush().await
    };
    match tokio::time::timeout(t, fut).await {
        Err(_) => Err(NbdError::Timeout { during, after: t }),
        Ok(Err(e)) => Err(NbdError::io(during, e)),
        Ok(Ok(())) => Ok(()),
    }
}
