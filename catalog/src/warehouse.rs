//! The warehouse: one object_store location holding every Delta table.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Once};

use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use object_store::aws::AmazonS3Builder;
use url::Url;

use crate::error::{Error, Result};

/// The embedded default: a warehouse folder next to where Shoal runs.
pub const DEFAULT_WAREHOUSE: &str = "file://./data/warehouse";

/// A warehouse location: the root URL under which each table is a folder.
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: Url,
}

impl Warehouse {
    /// Opens the warehouse at `location`, creating a local folder on first use.
    ///
    /// Accepts `file://` URLs (relative ones such as `file://./data/warehouse` resolve against
    /// the working directory), plain paths, and `s3://bucket/prefix` (credentials, region and
    /// endpoint from the usual `AWS_*` environment variables).
    pub fn open(location: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidWarehouse {
            location: location.to_string(),
            reason: reason.to_string(),
        };
        let root = if let Some(rest) = location.strip_prefix("file://") {
            local_url(rest).map_err(|e| invalid(&e))?
        } else if location.contains("://") {
            Url::parse(location).map_err(|e| invalid(&e.to_string()))?
        } else {
            local_url(location).map_err(|e| invalid(&e))?
        };
        match root.scheme() {
            "file" => {
                let path = root
                    .to_file_path()
                    .map_err(|()| invalid("not a local path"))?;
                std::fs::create_dir_all(&path).map_err(|source| Error::Io {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            "s3" | "s3a" => register_s3(),
            "memory" => {}
            other => return Err(invalid(&format!("unsupported scheme '{other}'"))),
        }
        let root = with_trailing_slash(root);
        Ok(Warehouse { root })
    }

    /// The root URL, always ending in `/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The URL of table `name`.
    pub fn table_url(&self, name: &str) -> Result<Url> {
        validate_table_name(name)?;
        self.root
            .join(&format!("{name}/"))
            .map_err(|e| Error::Internal(format!("joining table name to warehouse root: {e}")))
    }

    /// An object store whose root is the warehouse root, for the few non-table objects.
    pub fn object_store(&self) -> Result<ObjectStoreRef> {
        let store = deltalake::logstore::store_for(&self.root, std::iter::empty::<(&str, &str)>())
            .map_err(|e| Error::delta("<warehouse>", e))?;
        Ok(store)
    }

    /// Names of the Delta tables present in the warehouse, sorted.
    pub async fn table_names(&self) -> Result<Vec<String>> {
        use deltalake::DeltaTableBuilder;
        let store = self.object_store()?;
        let listing = store.list_with_delimiter(None).await?;
        let mut names = Vec::new();
        for dir in listing.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            if validate_table_name(name).is_err() {
                continue;
            }
            let url = self.table_url(name)?;
            let exists = DeltaTableBuilder::from_url(url)
                .and_then(|b| b.build())
                .map_err(|e| Error::delta(name, e))?
                .verify_deltatable_existence()
                .await
                .unwrap_or(false);
            if exists {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Table names are plain identifiers so they are safe as folder names and SQL names.
pub fn validate_table_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidTableName {
            name: name.to_string(),
        })
    }
}

fn local_url(path: &str) -> std::result::Result<Url, String> {
    let path = Path::new(if path.is_empty() { "." } else { path });
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("cannot read the working directory: {e}"))?
            .join(path)
    };
    let normalised = normalise(&absolute);
    Url::from_directory_path(&normalised).map_err(|()| "not an absolute path".to_string())
}

/// Removes `.` and `..` components without touching the file system (the folder may not exist).
fn normalise(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// S3 support through object_store's own client: credentials and endpoint come from the
/// `AWS_*` environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`). Commits rely on S3's conditional writes
/// (`If-None-Match`), so no external lock service is needed.
fn register_s3() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            let Ok(url) = Url::parse(scheme) else {
                continue;
            };
            object_store_factories().insert(url.clone(), Arc::new(S3Factory));
            logstore_factories().insert(url, Arc::new(S3LogStoreFactory));
        }
    });
}

struct S3Factory;

impl ObjectStoreFactory for S3Factory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> deltalake::DeltaResult<(ObjectStoreRef, object_store::path::Path)> {
        let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder.with_endpoint(endpoint);
        }
        for (key, value) in &config.raw {
            if let Ok(key) = key.parse() {
                builder = builder.with_config(key, value);
            }
        }
        let store = builder.build()?;
        let path = object_store::path::Path::from_url_path(url.path())?;
        Ok((Arc::new(store), path))
    }
}

struct S3LogStoreFactory;

impl LogStoreFactory for S3LogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Storage options handed to Delta for every table (none today; kept in one place).
pub(crate) fn storage_options() -> HashMap<String, String> {
    HashMap::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_file_urls_resolve_against_the_working_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let location = format!("file://{}/a/./b/../wh", dir.path().display());
        let warehouse = Warehouse::open(&location).expect("open");
        assert!(warehouse.root().as_str().ends_with("/a/wh/"));
        assert!(dir.path().join("a/wh").is_dir());
    }

    #[test]
    fn table_names_are_checked() {
        let warehouse = Warehouse::open("memory:///").expect("open");
        assert!(warehouse.table_url("events").is_ok());
        for bad in ["", "../x", "Events", "a/b", "a b", "1abc"] {
            assert!(warehouse.table_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let err = Warehouse::open("ftp://host/x").expect_err("must fail");
        assert!(err.to_string().contains("unsupported scheme"));
    }
}
