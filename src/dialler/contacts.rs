//! The API's functions: contacts (look-up, import, update, lock, unlock, reset, delete,
//! history) and campaigns.

use super::{
    first_record, record_campaign, record_id, records_of, target_path, Body, Dialler, DiallerError,
    ImportFlags, Record, Req, Target,
};
use reqwest::Method;
use serde_json::Value;

impl Dialler {
    /// Every contact of a campaign (or of the tenant). The API has no paging.
    pub async fn list_contacts(
        &self,
        campaign_id: Option<i64>,
    ) -> Result<Vec<Record>, DiallerError> {
        let q: Vec<_> = campaign_id
            .map(|c| ("diallerCampaignsID", c.to_string()))
            .into_iter()
            .collect();
        self.records(Req::get("/dialler/contacts", &q)).await
    }

    pub async fn get_contact(&self, id: i64) -> Result<Option<Record>, DiallerError> {
        self.one_or_none(&format!("/dialler/contacts/{id}")).await
    }

    pub async fn contacts_by_user_data(
        &self,
        user_data: &str,
    ) -> Result<Vec<Record>, DiallerError> {
        self.records_or_none(
            "/dialler/contacts/contact",
            &[("userData", user_data.to_string())],
        )
        .await
    }

    /// Imports one contact; returns the imported (or overwritten) contact.
    ///
    /// Without `overwrite_duplicates`, an import sent twice makes two contacts; so before
    /// a retry, the contact is looked up by UserData in its campaign, and if the failed
    /// attempt did create it, that contact is the result.
    pub async fn import(
        &self,
        contact: &Value,
        flags: ImportFlags,
    ) -> Result<Record, DiallerError> {
        let q = import_query(flags);
        let import = Req::post("/dialler/contacts/import", &q, contact);
        let user_data = contact.get("UserData").and_then(Value::as_str);
        let campaign = contact.get("DiallerCampaignsID").and_then(Value::as_i64);
        self.import_retrying(
            user_data,
            campaign,
            flags,
            false,
            |r| r,
            || {
                let import = import.clone();
                async move { first_record(self.call_once(import).await?) }
            },
        )
        .await
    }

    /// [`Dialler::import`] for the contact with `user_data` in campaign `campaign` whose
    /// JSON is `body` (serialized already): the imported contact's ID, `None` if the
    /// answer's record has none. The answer is read for its ID alone. With `look_first`,
    /// an import without `overwrite_duplicates` looks the contact up before its first
    /// attempt too (after a restore from an older snapshot, an earlier import of it may
    /// have reached the dialler unrecorded).
    pub(crate) async fn import_json(
        &self,
        body: &[u8],
        user_data: &str,
        campaign: i64,
        flags: ImportFlags,
        look_first: bool,
    ) -> Result<Option<i64>, DiallerError> {
        let q = import_query(flags);
        let import = Req::post_body("/dialler/contacts/import", &q, Body::Json(body));
        let found = |r: Record| record_id(&r);
        self.import_retrying(
            Some(user_data),
            Some(campaign),
            flags,
            look_first,
            found,
            || self.first_id_once(import.clone()),
        )
        .await
    }

    /// An import's attempts: `send` once per attempt, retried while the failure is
    /// transient. Without `overwrite_duplicates` (and `user_data` known), each retry, and
    /// with `look_first` the first attempt too, looks first for the contact that an
    /// earlier attempt may have imported, and `found` makes the result of it.
    async fn import_retrying<T, Fut>(
        &self,
        user_data: Option<&str>,
        campaign: Option<i64>,
        flags: ImportFlags,
        look_first: bool,
        found: impl Fn(Record) -> T,
        send: impl Fn() -> Fut,
    ) -> Result<T, DiallerError>
    where
        Fut: std::future::Future<Output = Result<T, DiallerError>>,
    {
        let (found, send) = (&found, &send);
        self.retrying(|n| async move {
            if let (false, true, Some(user_data)) =
                (flags.overwrite_duplicates, n > 0 || look_first, user_data)
            {
                if let Some(r) = self.imported_once(user_data, campaign).await? {
                    return Ok(found(r));
                }
            }
            send().await
        })
        .await
    }

    /// The contact with `user_data` in `campaign` (any, if `None`) that an earlier
    /// attempt imported, the oldest if several: one look-up, not retried.
    async fn imported_once(
        &self,
        user_data: &str,
        campaign: Option<i64>,
    ) -> Result<Option<Record>, DiallerError> {
        let found = self
            .call_once(Req::get(
                "/dialler/contacts/contact",
                &[("userData", user_data.to_string())],
            ))
            .await;
        let found = match found {
            Err(e) if e.is_not_found() => Vec::new(),
            other => records_of(other?)?,
        };
        Ok(found
            .into_iter()
            .filter(|r| campaign.is_none() || record_campaign(r) == campaign)
            .min_by_key(record_id))
    }

    /// [`Dialler::update`] of the contact whose JSON is `body` (serialized already); the
    /// answer is checked to hold a record, and not read further.
    pub(crate) async fn update_json(&self, body: &[u8]) -> Result<(), DiallerError> {
        let req = Req::post_body("/dialler/contacts/update", &[], Body::Json(body));
        self.retrying(|_| self.first_id_once(req.clone()))
            .await
            .map(drop)
    }

    /// Updates the fields present in `contact`, which must hold `ID` or `UserData`.
    pub async fn update(&self, contact: &Value) -> Result<Record, DiallerError> {
        self.one(Req::post("/dialler/contacts/update", &[], contact))
            .await
    }

    pub async fn delete(&self, target: Target<'_>) -> Result<(), DiallerError> {
        let (path, q) = target_path(target, None);
        self.call(Req::bodiless(Method::DELETE, &path, &q))
            .await
            .map(drop)
    }

    pub async fn lock(&self, target: Target<'_>) -> Result<(), DiallerError> {
        self.patch(target, "lock").await
    }

    pub async fn unlock(&self, target: Target<'_>) -> Result<(), DiallerError> {
        self.patch(target, "unlock").await
    }

    pub async fn reset(&self, target: Target<'_>) -> Result<(), DiallerError> {
        self.patch(target, "reset").await
    }

    /// The PATCH functions: lock, unlock, reset.
    pub(super) async fn patch(&self, target: Target<'_>, action: &str) -> Result<(), DiallerError> {
        let (path, q) = target_path(target, Some(action));
        self.call(Req::bodiless(Method::PATCH, &path, &q))
            .await
            .map(drop)
    }

    pub async fn history(&self, target: Target<'_>) -> Result<Vec<Record>, DiallerError> {
        let (path, q) = target_path(target, Some("history"));
        self.records(Req::get(&path, &q)).await
    }

    // ---- users ----

    /// The logins (`UID`) of the tenant's users (seed 003, "Retrieve all Users").
    pub async fn user_logins(&self) -> Result<Vec<String>, DiallerError> {
        let records = self.records(Req::get("/users", &[])).await?;
        Ok(records
            .iter()
            .filter_map(|u| u.get("UID").and_then(Value::as_str))
            .map(str::to_string)
            .collect())
    }

    // ---- campaigns ----

    pub async fn campaigns(&self) -> Result<Vec<Record>, DiallerError> {
        self.records(Req::get("/dialler/campaigns", &[])).await
    }

    pub async fn campaign(&self, id: i64) -> Result<Option<Record>, DiallerError> {
        self.one_or_none(&format!("/dialler/campaigns/{id}")).await
    }

    /// The campaign's result codes (seed 003: `ExportKey`, `Content`, `bDone`, `bAborted`,
    /// `bDelay`, `bAppointment`), with their texts in English (`languagesID=1`).
    pub async fn result_codes(&self, campaign: i64) -> Result<Vec<Record>, DiallerError> {
        let path = format!("/dialler/campaigns/campaign/{campaign}/resultCodes");
        self.records(Req::get(&path, &[("languagesID", "1".to_string())]))
            .await
    }

    /// Campaigns whose name contains `name` (the API matches partially).
    pub async fn campaigns_by_name(&self, name: &str) -> Result<Vec<Record>, DiallerError> {
        self.records_or_none("/dialler/campaigns/campaign", &[("name", name.to_string())])
            .await
    }

    /// The ID of the campaign named exactly `name`.
    pub async fn resolve_campaign(&self, name: &str) -> Result<i64, DiallerError> {
        let found = self.campaigns_by_name(name).await?;
        let exact: Vec<i64> = found
            .iter()
            .filter(|c| c.get("Name").and_then(Value::as_str) == Some(name))
            .filter_map(|c| c.get("ID").and_then(Value::as_i64))
            .collect();
        match exact.as_slice() {
            [id] => Ok(*id),
            [] => Err(DiallerError::CampaignNotFound {
                name: name.to_string(),
                similar: found
                    .iter()
                    .filter_map(|c| c.get("Name").and_then(Value::as_str))
                    .map(|s| format!("{s:?}"))
                    .collect(),
            }),
            // Several campaigns with the very same name: the name cannot pick one.
            ids => Err(DiallerError::Conflict {
                message: format!(
                    "{} campaigns are named {name:?} (IDs {ids:?}); use campaign_id",
                    ids.len()
                ),
            }),
        }
    }
}

/// The query of an import: `overwriteDuplicates` always, the other flags if set.
pub(super) fn import_query(flags: ImportFlags) -> Vec<(&'static str, String)> {
    let mut q = vec![(
        "overwriteDuplicates",
        flags.overwrite_duplicates.to_string(),
    )];
    if let Some(r) = flags.reset_contact {
        q.push(("resetContact", r.to_string()));
    }
    if let Some(u) = flags.unlock_contact {
        q.push(("unlockContact", u.to_string()));
    }
    q
}
