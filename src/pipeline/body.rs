//! Stage 3: reading the body under a size limit and a deadline. The limit is enforced while
//! reading (and up front from `Content-Length`), so an oversized body is refused before the
//! excess is buffered; a client that stalls mid-body is cut off by the deadline.

use std::time::Duration;

use actix_web::http::header::{HeaderMap, CONTENT_LENGTH};
use actix_web::web::{Bytes, BytesMut, Payload};
use futures_util::{FutureExt, StreamExt};

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("the request body was not received in time")]
    Timeout,
    #[error("the body could not be read: {0}")]
    Broken(String),
}

/// Reads the whole body, refusing more than `limit` bytes or taking longer than `deadline`.
pub async fn read_limited(
    mut payload: Payload,
    headers: &HeaderMap,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let capacity = declared.map_or(8 * 1024, |len| len as usize);
    let read = async {
        let mut body = BytesMut::with_capacity(capacity);
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    // A small body usually arrived with the head: take it without arming a timer.
    let mut read = std::pin::pin!(read);
    if let Some(body) = (&mut read).now_or_never() {
        return body;
    }
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| BodyError::Timeout)?
}
