//! A campaign's contacts, streamed: the answer is parsed as it arrives, one record at a
//! time, on a blocking thread.

use super::{Dialler, DiallerError, Record, Req};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

impl Dialler {
    /// Every contact of a campaign, streamed: `each` sees one record at a time as the
    /// answer is parsed (on a blocking thread), so a campaign of millions is never held in
    /// memory, and is handed back at the end with whatever it gathered. One request,
    /// retried like any other until its answer starts; a break in the middle of the
    /// answer is an error. Older servers ignore the campaign and list the whole tenant:
    /// `each` sees those records too (each has its `DiallerCampaignsID`).
    pub async fn stream_contacts<F>(&self, campaign_id: i64, each: F) -> Result<F, DiallerError>
    where
        F: FnMut(Record) + Send + 'static,
    {
        let q = [("diallerCampaignsID", campaign_id.to_string())];
        let (mut resp, slot) = self
            .retrying(|_| self.respond_once(Req::listing("/dialler/contacts", &q)))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
        let parse = tokio::task::spawn_blocking(move || {
            let mut each = each;
            let reader = ChannelReader {
                rx,
                chunk: bytes::Bytes::new(),
            };
            let mut de = serde_json::Deserializer::from_reader(reader);
            Listing { each: &mut each }
                .deserialize(&mut de)
                .and_then(|()| de.end())
                .map_err(|e| {
                    DiallerError::Decode(format!("the list of contacts could not be read: {e}"))
                })?;
            Ok(each)
        });
        let pump = async move {
            // The call is in flight until its answer is read.
            let _slot = slot;
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => Ok(c),
                    Ok(None) => break,
                    Err(e) => Err(std::io::Error::other(e.without_url())),
                };
                let failed = chunk.is_err();
                // The parser may have stopped (malformed answer): nothing more to hand over.
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        };
        let ((), parsed) = tokio::join!(pump, parse);
        parsed.map_err(|e| {
            DiallerError::Decode(format!("reading the list of contacts failed: {e}"))
        })?
    }
}

/// The body of an answer, chunk by chunk from the async side, as a blocking `Read`.
pub(super) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// A listing answer (`{"records": [...], "count": ..., ...}`), each record handed to
/// `each` as it is parsed, the other keys skipped.
pub(super) struct Listing<'f, F> {
    each: &'f mut F,
}

impl<'de, F: FnMut(Record)> DeserializeSeed<'de> for Listing<'_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(Record)> Visitor<'de> for Listing<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object with `records`")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "records" {
                map.next_value_seed(Records {
                    each: &mut *self.each,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `records` array of a listing (or `null`).
pub(super) struct Records<'f, F> {
    each: &'f mut F,
}

impl<'de, F: FnMut(Record)> DeserializeSeed<'de> for Records<'_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: FnMut(Record)> Visitor<'de> for Records<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of contacts")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(r) = seq.next_element::<Record>()? {
            (self.each)(r);
        }
        Ok(())
    }
}
