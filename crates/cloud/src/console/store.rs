//! The console's rows in the cloud's database: administrators (argon2id
//! password hashes), their login sessions (SHA-256 of the cookie's token:
//! a copy of the database opens no session) and when devices last
//! registered.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::store::{
    dummy_hash, from_unix_secs, hash_password, placeholders, unix_secs, Store, StoreError,
};

/// A console administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub name: String,
    pub created_at: SystemTime,
}

/// A logged-in administrator's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub admin: String,
    /// The form token every state-changing request must carry.
    pub csrf: String,
    pub expires_at: SystemTime,
}

impl Store {
    /// Adds a console administrator with an argon2id hash of `password`.
    pub async fn add_admin(&self, name: &str, password: &str) -> Result<(), StoreError> {
        let hash = hash_password(password).await?;
        let done = sqlx::query(
            "INSERT INTO console_admins (name, password_hash, created_at) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(hash)
        .bind(unix_secs(SystemTime::now()))
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::AdminExists(name.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes an administrator and ends its sessions.
    pub async fn remove_admin(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM console_sessions WHERE admin = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM console_admins WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        if gone == 0 {
            return Err(StoreError::NoSuchAdmin(name.to_owned()));
        }
        Ok(())
    }

    pub async fn admins(&self) -> Result<Vec<Admin>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, created_at FROM console_admins ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, at)| Admin {
                name,
                created_at: from_unix_secs(at),
            })
            .collect())
    }

    /// Whether `password` is `name`'s. An unknown name costs the same
    /// argon2 work as a wrong password, so timing does not tell names.
    pub async fn check_admin(&self, name: &str, password: &str) -> Result<bool, StoreError> {
        let hash: Option<(String,)> =
            sqlx::query_as("SELECT password_hash FROM console_admins WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        let known = hash.is_some();
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || {
            let hash = match &hash {
                Some((h,)) => h.as_str(),
                None => dummy_hash(),
            };
            cyphonic_pki::verify_password(&password, hash)
        })
        .await
        .map_err(|e| StoreError::Password(e.to_string()))?;
        Ok(known && matches)
    }

    /// Opens a console session under the hash of its cookie's token.
    pub async fn create_console_session(
        &self,
        token_hash: &[u8; 32],
        admin: &str,
        csrf: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, admin, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token_hash[..])
        .bind(admin)
        .bind(csrf)
        .bind(unix_secs(now))
        .bind(unix_secs(now + lifetime))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live session under `token_hash`, if any.
    pub async fn console_session(
        &self,
        token_hash: &[u8; 32],
        now: SystemTime,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT admin, csrf, expires_at FROM console_sessions \
             WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(&token_hash[..])
        .bind(unix_secs(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(admin, csrf, expires)| ConsoleSession {
            admin,
            csrf,
            expires_at: from_unix_secs(expires),
        }))
    }

    /// Ends one session (logout), and every expired one.
    pub async fn end_console_session(
        &self,
        token_hash: &[u8; 32],
        now: SystemTime,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1 OR expires_at <= $2")
            .bind(&token_hash[..])
            .bind(unix_secs(now))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// When each device last registered at an NMS (devices that never did
    /// are absent).
    pub async fn last_seen(&self) -> Result<HashMap<String, SystemTime>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT device_id, last_seen FROM devices WHERE last_seen IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, at)| (id, from_unix_secs(at)))
            .collect())
    }

    /// Per device, its certificates still good and those revoked.
    pub async fn certificate_counts(&self) -> Result<HashMap<String, (u32, u32)>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT device_id, \
                    SUM(CASE WHEN status = 'good' THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END) \
             FROM certificates GROUP BY device_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, good, revoked)| (id, (good as u32, revoked as u32)))
            .collect())
    }

    /// Records that the devices named `fqdns` were seen at `now` (the
    /// NMS, for the registered nodes it heard from lately).
    pub async fn touch_last_seen(
        &self,
        fqdns: &[String],
        now: SystemTime,
    ) -> Result<(), StoreError> {
        for chunk in fqdns.chunks(500) {
            let marks = placeholders(2..=chunk.len() + 1);
            let sql = format!("UPDATE devices SET last_seen = $1 WHERE fqdn IN ({marks})");
            let mut query = sqlx::query(&sql).bind(unix_secs(now));
            for fqdn in chunk {
                query = query.bind(fqdn);
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }
}
