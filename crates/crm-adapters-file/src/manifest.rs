//! `manifest.json`: the commit point of a compaction and the only thing start-up trusts
//! about the snapshot files, once its own checksum matches.
//!
//! It names every snapshot file with its length and crc32, the journal generations and
//! sequence numbers those files already hold, and where the event and outbound-queue
//! numbering continue. It is written whole under a temporary name and renamed into place.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frame;
use crate::journal::sync_dir;
use crate::records::FORMAT;

pub(crate) const MANIFEST: &str = "manifest.json";

/// The length and checksum a snapshot file must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Digest {
    pub bytes: u64,
    pub crc32: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub format: u32,
    /// Journal generations up to this one are folded into the files below.
    pub generation: u64,
    /// Journal generations up to this one were written by the first release (no header,
    /// no sequence numbers); an upgrade folded them.
    pub legacy_generation: u64,
    /// The last journal record those files hold.
    pub last_seq: u64,
    /// Where event and outbound numbering continue (retention may have removed the
    /// records that carried the highest numbers).
    pub last_event_seq: u64,
    pub last_outbound_seq: u64,
    /// Events up to this number were removed by retention.
    pub events_deleted_through: u64,
    /// Every snapshot file, by name.
    pub files: BTreeMap<String, Digest>,
}

impl Manifest {
    /// The manifest of a new, empty data dir.
    #[cfg(test)]
    pub fn empty() -> Self {
        Self {
            format: FORMAT,
            generation: 0,
            legacy_generation: 0,
            last_seq: 0,
            last_event_seq: 0,
            last_outbound_seq: 0,
            events_deleted_through: 0,
            files: BTreeMap::new(),
        }
    }

    /// The sum of the snapshot files' sizes.
    pub fn snapshot_bytes(&self) -> u64 {
        self.files.values().map(|digest| digest.bytes).sum()
    }
}

/// The file as written: the manifest's JSON and the crc32 of exactly that text.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed<'a> {
    crc32: String,
    #[serde(borrow)]
    manifest: &'a RawValue,
}

/// What a manifest file turned out to be.
#[derive(Debug)]
pub(crate) enum Read {
    Current(Manifest),
    /// The first release's manifest, which carried no checksum.
    Legacy(crate::legacy::LegacyManifest),
}

/// Reads and checks `bytes` as a manifest.
pub(crate) fn parse(bytes: &[u8]) -> Result<Read, String> {
    if let Ok(sealed) = serde_json::from_slice::<Sealed>(bytes) {
        let text = sealed.manifest.get();
        if frame::checksum(text.as_bytes()) != sealed.crc32 {
            return Err("checksum mismatch".into());
        }
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| format!("unreadable: {e}"))?;
        if manifest.format != FORMAT {
            return Err(format!(
                "format {} is not one this version reads (it reads {FORMAT})",
                manifest.format
            ));
        }
        return Ok(Read::Current(manifest));
    }
    serde_json::from_slice(bytes)
        .map(Read::Legacy)
        .map_err(|_| "neither a sealed manifest nor one of the first release".to_owned())
}

/// Writes the manifest whole: under a temporary name, synced, renamed into place, and
/// the rename made durable. The rename is the commit point of a compaction.
pub(crate) fn write(dir: &Path, manifest: &Manifest) -> io::Result<()> {
    let text = serde_json::to_string(manifest).expect("a manifest always serializes");
    let sealed = Sealed {
        crc32: frame::checksum(text.as_bytes()),
        manifest: &RawValue::from_string(text).expect("serde_json wrote valid JSON"),
    };
    let temporary = dir.join(format!("{MANIFEST}.tmp"));
    let mut file = File::create(&temporary)?;
    serde_json::to_writer(&mut file, &sealed)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, dir.join(MANIFEST))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(manifest: &Manifest) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), manifest).unwrap();
        fs::read(dir.path().join(MANIFEST)).unwrap()
    }

    #[test]
    fn a_written_manifest_reads_back() {
        let mut manifest = Manifest::empty();
        manifest.last_seq = 41;
        let bytes = written(&manifest);
        assert!(matches!(parse(&bytes), Ok(Read::Current(read)) if read == manifest));
    }

    #[test]
    fn a_manifest_with_one_changed_digit_is_refused() {
        let mut manifest = Manifest::empty();
        manifest.last_seq = 41;
        let text = String::from_utf8(written(&manifest)).unwrap();
        let changed = text.replace("\"last_seq\":41", "\"last_seq\":42");
        assert_ne!(changed, text);
        assert_eq!(
            parse(changed.as_bytes()).unwrap_err(),
            "checksum mismatch".to_owned()
        );
    }
}
