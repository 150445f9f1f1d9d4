//! One contact's operations, each committed to the state as soon as the dialler confirmed
//! it: an import (and its look-up before a re-send), an update/reset/unlock, a lock or a
//! delete (after checking that the stored ID still holds the contact).

use super::{Done, Run, TaskError};
use crate::dialler::{self, record_campaign, record_id, DiallerError, ImportFlags};
use crate::engine::mapping::{self, Contact};
use crate::engine::plan::{Change, Removal, RemovalKind};
use crate::fields::Field;
use crate::fields::FieldValue;
use crate::key::record_key;
use crate::state::{Entry, LastOp, Pending};

/// An import's JSON: the campaign, the UserData and each value that is not empty,
/// written straight from the mapped contact.
struct ImportBody<'a> {
    campaign_id: i64,
    key: &'a str,
    values: &'a [(&'static Field, FieldValue)],
}

impl serde::Serialize for ImportBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("DiallerCampaignsID", &self.campaign_id)?;
        m.serialize_entry("UserData", self.key)?;
        for (f, v) in self.values {
            if !v.is_null() {
                m.serialize_entry(f.name, v)?;
            }
        }
        m.end()
    }
}

/// An update's JSON: the contact's ID and each value to change (an empty one as `null`,
/// which clears it).
struct UpdateBody<'a> {
    id: i64,
    values: &'a [(&'static Field, FieldValue)],
}

impl serde::Serialize for UpdateBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("ID", &self.id)?;
        for (f, v) in self.values {
            m.serialize_entry(f.name, v)?;
        }
        m.end()
    }
}

impl Run<'_> {
    pub(super) async fn import(&self, c: Contact, done: &mut Done) -> Result<(), TaskError> {
        let pending = Pending {
            fields: c.hashes,
            triggers: c.triggers,
            row: c.row,
            phones: c.phones,
            keyed: true,
        };
        self.send_import(&c.key, &c.fields, pending).await?;
        done.imported += 1;
        Ok(())
    }

    /// Imports `key` (already journalled as `pending`) and stores its entry; the journal
    /// is the caller's to clear.
    pub(super) async fn send_import(
        &self,
        key: &str,
        values: &[(&'static Field, FieldValue)],
        pending: Pending,
    ) -> Result<i64, TaskError> {
        let campaign_id = self
            .campaign_id()
            .await
            .map_err(|e| TaskError::Dialler("import", e))?;
        let body = serde_json::to_vec(&ImportBody {
            campaign_id,
            key,
            values,
        })
        .expect("values serialize");
        let flags = ImportFlags {
            overwrite_duplicates: self.job.overwrite_duplicates,
            reset_contact: self.job.reset_contact,
            unlock_contact: self.job.unlock_contact,
        };
        let id = self
            .dialler
            .import_json(&body, key, campaign_id, flags, self.look_first)
            .await
            .map_err(|e| match e {
                // The only object an import refers to is its campaign.
                e if e.is_not_found() => {
                    TaskError::Dialler("import", DiallerError::CampaignIdNotFound(campaign_id))
                }
                e => TaskError::Dialler("import", e),
            })?
            .ok_or_else(|| {
                TaskError::Dialler(
                    "import",
                    DiallerError::Decode("the imported contact has no ID".into()),
                )
            })?;
        let entry = Entry {
            id,
            fields: pending.fields,
            triggers: pending.triggers,
            locked: false,
            last_op: LastOp::Imported,
            last_run: self.now,
            row: pending.row,
            phones: pending.phones,
            keyed: pending.keyed,
        };
        self.state.put(key, &entry)?;
        Ok(id)
    }

    /// The contact of `c` is gone from the dialler (deleted there by someone): import it
    /// again with every field, as if new. Its old entry goes first, so that after a crash
    /// the journal, not a dead ID, says what to do.
    pub(super) async fn reimport(
        &self,
        c: Change,
        gone: DiallerError,
        done: &mut Done,
    ) -> Result<(), TaskError> {
        self.state.remove(&c.key)?;
        let pending = Pending {
            fields: c.fields,
            triggers: c.triggers,
            row: c.row,
            phones: c.phones,
            keyed: true,
        };
        self.state.put_pending(&c.key, &pending)?;
        // No entry left to doubt: from here on the journal says what to do.
        self.state.clear_in_flight(&c.key)?;
        self.state.flush().await?;
        // The numbers the plan did not normalise (as they were) are needed now.
        let values = mapping::with_kept(self.job, c.values, &c.kept);
        let id = self.send_import(&c.key, &values, pending).await?;
        self.state.clear_pending(&c.key)?;
        tracing::warn!(job = %self.job.name, user_data = %c.key, old_id = c.old.id, new_id = id, error = %gone,
            "the contact was gone from the dialler; imported it again");
        done.imported += 1;
        Ok(())
    }

    /// Update, reset, unlock, in that order, storing after each confirmed call what it made
    /// true: after the update the new field hashes (and, unless a reset is still due, the
    /// trigger hashes, which then differ only by triggers newly added to the config);
    /// after the reset the trigger hashes; after the unlock the lock flag. A step that
    /// fails leaves its part of the entry as it was, so the next run does it again. A
    /// contact found gone (404) is imported again.
    pub(super) async fn change(&self, c: Change, done: &mut Done) -> Result<(), TaskError> {
        let mut entry = c.old.clone();
        entry.last_run = self.now;
        // Until the last step is confirmed the contact reflects no row in full: a row
        // hash stored earlier could match a later export that reverts the change.
        entry.row = 0;
        let target = dialler::Target::Id(entry.id);
        if !c.update.is_empty() {
            let body = serde_json::to_vec(&UpdateBody {
                id: entry.id,
                values: &c.update,
            })
            .expect("values serialize");
            match self.dialler.update_json(&body).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return self.reimport(c, e, done).await,
                Err(e) => return Err(TaskError::Dialler("update", e)),
            }
            crate::failpoint::hit("update-confirmed");
            entry.fields.clone_from(&c.fields);
            entry.phones = c.phones;
            if !c.reset {
                entry.triggers.clone_from(&c.triggers);
            }
            entry.last_op = LastOp::Updated;
            if !c.reset && !c.unlock {
                entry.row = c.row;
            }
            self.state.put(&c.key, &entry)?;
            done.updated += 1;
        }
        // Without an update, the field hashes can still differ by fields newly added to
        // the config; they go with the next write.
        entry.fields.clone_from(&c.fields);
        entry.phones = c.phones;
        if c.reset {
            match self.dialler.reset(target).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => return self.reimport(c, e, done).await,
                Err(e) => return Err(TaskError::Dialler("reset", e)),
            }
            entry.triggers.clone_from(&c.triggers);
            entry.last_op = LastOp::Reset;
            if !c.unlock {
                entry.row = c.row;
            }
            self.state.put(&c.key, &entry)?;
            done.reset += 1;
        }
        if c.unlock {
            match self.dialler.unlock(target).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => return self.reimport(c, e, done).await,
                Err(e) => return Err(TaskError::Dialler("unlock", e)),
            }
            entry.triggers.clone_from(&c.triggers);
            entry.locked = false;
            entry.last_op = LastOp::Unlocked;
            entry.row = c.row;
            self.state.put(&c.key, &entry)?;
            done.unlocked += 1;
        }
        Ok(())
    }

    pub(super) async fn remove(&self, r: Removal, done: &mut Done) -> Result<(), TaskError> {
        let target = dialler::Target::Id(r.old.id);
        if r.kind == RemovalKind::Delete && !self.still_holds(&r, done).await? {
            return Ok(());
        }
        let (op, result) = match r.kind {
            RemovalKind::Lock => ("lock", self.dialler.lock(target).await),
            RemovalKind::Delete => ("delete", self.dialler.delete(target).await),
        };
        match result {
            Ok(()) => match r.kind {
                RemovalKind::Lock => {
                    let mut entry = r.old;
                    entry.locked = true;
                    entry.last_op = LastOp::Locked;
                    entry.last_run = self.now;
                    self.state.put(&r.key, &entry)?;
                    done.locked += 1;
                }
                RemovalKind::Delete => {
                    self.state.remove(&r.key)?;
                    done.deleted += 1;
                }
            },
            // Already gone from the dialler: nothing left to lock or delete; forget it.
            Err(e) if e.is_not_found() => {
                self.state.remove(&r.key)?;
                done.already_gone += 1;
            }
            Err(e) => return Err(TaskError::Dialler(op, e)),
        }
        Ok(())
    }

    /// Before a delete (irreversible): whether the stored ID still holds this UserData,
    /// with one read. If it holds another contact (the dialler was restored or renumbered)
    /// the UserData is looked up in the campaign and its ID re-learned, so that the next
    /// run deletes the right contact, after checking again; if the contact is gone, it is
    /// forgotten. Either way nothing is deleted now.
    pub(super) async fn still_holds(
        &self,
        r: &Removal,
        done: &mut Done,
    ) -> Result<bool, TaskError> {
        let check = |e| TaskError::Dialler("delete", e);
        let found = self.dialler.get_contact(r.old.id).await.map_err(check)?;
        let Some(record) = found else {
            self.state.remove(&r.key)?;
            done.already_gone += 1;
            return Ok(false);
        };
        if record_key(&record).as_deref() == Some(r.key.as_str()) {
            return Ok(true);
        }
        done.stale_ids += 1;
        let campaign = self.campaign_id().await.map_err(check)?;
        let elsewhere = self
            .dialler
            .contacts_by_user_data(&r.key)
            .await
            .map_err(check)?
            .iter()
            .filter(|c| record_campaign(c).is_none_or(|id| id == campaign))
            .filter_map(record_id)
            .min();
        tracing::warn!(job = %self.job.name, user_data = %r.key, stale_id = r.old.id, now_id = ?elsewhere,
            "not deleted: the stored ID now holds another contact (the dialler was restored or renumbered?)");
        match elsewhere {
            Some(id) => {
                let entry = Entry {
                    id,
                    row: 0,
                    last_run: self.now,
                    ..r.old.clone()
                };
                self.state.put(&r.key, &entry)?;
            }
            None => {
                self.state.remove(&r.key)?;
                done.already_gone += 1;
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str) -> &'static Field {
        crate::fields::by_name(name).unwrap()
    }

    /// The bodies are written straight from the contact: an import leaves empty values
    /// out, an update sends them as null (to clear them); both are the JSON the
    /// dialler's functions take.
    #[test]
    fn import_and_update_bodies_are_the_contacts_json() {
        let values = [
            (field("Name"), FieldValue::Text("Müller \"Quote\"".into())),
            (field("City"), FieldValue::Null),
            (
                field("PhoneNumber1"),
                FieldValue::Text("+4989123456".into()),
            ),
        ];
        let import: serde_json::Value = serde_json::from_slice(
            &serde_json::to_vec(&ImportBody {
                campaign_id: 538,
                key: "K1",
                values: &values,
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            import,
            serde_json::json!({"DiallerCampaignsID": 538, "UserData": "K1",
                "Name": "Müller \"Quote\"", "PhoneNumber1": "+4989123456"})
        );
        let update: serde_json::Value = serde_json::from_slice(
            &serde_json::to_vec(&UpdateBody {
                id: 100_001,
                values: &values,
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            update,
            serde_json::json!({"ID": 100_001, "Name": "Müller \"Quote\"", "City": null,
                "PhoneNumber1": "+4989123456"})
        );
    }
}
