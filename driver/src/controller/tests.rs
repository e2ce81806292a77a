//! Unit tests of the CSI controller service: provisioning, expansion,
//! identity from the PVC, and what each step tells the PVC in Events.
use super::*;
use crate::mounts::FakeMounts;
use crate::pvc::FakePvcReader;
use hubfs_proto::csi::{volume_capability::AccessMode, CapacityRange};
use hubfs_quota::events::FakeEventSink;
use tonic::Code;

fn service(root: &std::path::Path) -> (ControllerService, Arc<FakeEventSink>) {
    let events = Arc::new(FakeEventSink::default());
    let shares = Shares::new(
        Arc::new(FakeMounts::default()),
        root.join("state"),
        vec![root.to_owned()],
    );
    (ControllerService::new(shares, events.clone()), events)
}

fn mount_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(AccessMode { mode: 5 }),
    }
}

fn create(root: &std::path::Path, name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap()],
        parameters: HashMap::from([
            ("root".into(), root.join("share").display().to_string()),
            (
                keys::UID.into(),
                crate::homes::tests::test_owner().0.to_string(),
            ),
            (
                keys::GID.into(),
                crate::homes::tests::test_owner().1.to_string(),
            ),
            (keys::PVC_NAME.into(), "claim-erin".into()),
            (keys::PVC_NAMESPACE.into(), "jhub".into()),
        ]),
        ..Default::default()
    }
}

fn code(e: DriverError) -> Code {
    Status::from(e).code()
}

#[test]
fn validate_confirms_mounts_and_explains_block() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("share")).unwrap();
    let (c, _) = service(d.path());
    let v = c
        .provision(create(d.path(), "pvc-e", 1 << 20), None)
        .unwrap();
    let ok = c
        .validate(ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![mount_cap()],
            ..Default::default()
        })
        .unwrap();
    assert!(ok.confirmed.is_some());
    let block = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(Default::default())),
        access_mode: Some(AccessMode { mode: 1 }),
    };
    let no = c
        .validate(ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![block],
            ..Default::default()
        })
        .unwrap();
    assert!(
        no.confirmed.is_none() && no.message.contains("block"),
        "{}",
        no.message
    );
    let missing = |id: &str, caps: Vec<VolumeCapability>| {
        c.validate(ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_capabilities: caps,
            ..Default::default()
        })
        .map(|_| ())
        .unwrap_err()
    };
    assert_eq!(code(missing("", vec![mount_cap()])), Code::InvalidArgument);
    assert_eq!(code(missing(&v.volume_id, vec![])), Code::InvalidArgument);
    assert_eq!(
        code(missing("foreign-id", vec![mount_cap()])),
        Code::NotFound
    );
    std::fs::remove_dir(d.path().join("share/users/erin")).unwrap();
    assert_eq!(
        code(missing(&v.volume_id, vec![mount_cap()])),
        Code::NotFound
    );
}

#[test]
fn expand_changes_the_recorded_quota() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("share")).unwrap();
    let (c, _) = service(d.path());
    let v = c
        .provision(create(d.path(), "pvc-e", 1 << 20), None)
        .unwrap();
    let r = |bytes: i64| ControllerExpandVolumeRequest {
        volume_id: v.volume_id.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    assert_eq!(c.expand(r(5 << 20)).unwrap().capacity_bytes, 5 << 20);
    let vol = HomeVolume::parse_id(&v.volume_id).unwrap();
    let meta = homes::read_meta(&vol, &d.path().join("share"))
        .unwrap()
        .unwrap();
    assert_eq!(meta.capacity_bytes, 5 << 20);
    assert_eq!(meta.pvc_name.as_deref(), Some("claim-erin"));
    assert_eq!(code(c.expand(r(0)).unwrap_err()), Code::InvalidArgument);
    assert_eq!(code(c.expand(r(-1)).unwrap_err()), Code::OutOfRange);
    let mut no_range = r(1);
    no_range.capacity_range = None;
    assert_eq!(code(c.expand(no_range).unwrap_err()), Code::InvalidArgument);
    let mut other = r(1);
    other.volume_id = "foreign".into();
    assert_eq!(code(c.expand(other).unwrap_err()), Code::NotFound);
}

fn jhub_create(
    root: &std::path::Path,
    name: &str,
    pvc: &str,
    extra: &[(&str, &str)],
) -> CreateVolumeRequest {
    let mut r = create(root, name, 1 << 20);
    r.parameters.insert(keys::PVC_NAME.into(), pvc.into());
    for (k, v) in extra {
        r.parameters.insert(k.to_string(), v.to_string());
    }
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn the_home_is_keyed_by_the_annotated_hub_user_and_adopts_a_legacy_one() {
    let d = tempfile::tempdir().unwrap();
    // carol's home from the static-PVC EFS setup's `subPath: home/{username}` (escaped).
    let legacy = d.path().join("share/users/carol-2esmith-40example-2eorg");
    std::fs::create_dir_all(&legacy).unwrap();
    std::fs::write(legacy.join("thesis.tex"), b"\\begin").unwrap();
    let claims = Arc::new(
        FakePvcReader::default()
            .with(
                "jhub",
                "claim-jmiller-stsci-edu---77689c6d",
                &[("hub.jupyter.org/username", "jmiller@stsci.edu")],
            )
            .with(
                "jhub",
                "claim-carol-2esmith-40example-2eorg",
                &[("hub.jupyter.org/username", "carol.smith@example.org")],
            ),
    );
    let (c, events) = service(d.path());
    let c = c.with_pvc_reader(claims.clone());
    let v = c
        .create(jhub_create(
            d.path(),
            "pvc-j",
            "claim-jmiller-stsci-edu---77689c6d",
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(v.volume_context["user"], "jmiller@stsci.edu");
    let vol = HomeVolume::parse_id(&v.volume_id).unwrap();
    assert_eq!(vol.user.name(), "jmiller@stsci.edu");
    assert!(d.path().join("share/users/jmiller_40stsci_2eedu").is_dir());
    let meta = homes::read_meta(&vol, &d.path().join("share"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (meta.user.as_str(), meta.user_from.as_deref()),
        ("jmiller@stsci.edu", Some("annotation"))
    );
    let v = c
        .create(jhub_create(
            d.path(),
            "pvc-c",
            "claim-carol-2esmith-40example-2eorg",
            &[],
        ))
        .await
        .unwrap();
    let own = d.path().join("share/users/carol_2esmith_40example_2eorg");
    assert_eq!(std::fs::read(own.join("thesis.tex")).unwrap(), b"\\begin");
    assert!(!legacy.exists(), "adopted, not duplicated");
    assert_eq!(v.volume_context["user"], "carol.smith@example.org");
    assert_eq!(claims.gets.load(std::sync::atomic::Ordering::SeqCst), 2);
    let notes: Vec<String> = events
        .wait_posted(2)
        .await
        .into_iter()
        .map(|n| n.note)
        .collect();
    assert!(
        notes.iter().any(|n| n.starts_with(
            "home of carol.smith@example.org adopted from carol-2esmith-40example-2eorg"
        )),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("home of jmiller@stsci.edu created")),
        "{notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_cluster_falls_back_to_the_claim_name_and_a_silent_cluster_is_retried() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("share")).unwrap();
    let (c, events) = service(d.path());
    // No API server: today's behaviour, said in the event.
    let v = c
        .create(jhub_create(
            d.path(),
            "pvc-a",
            "claim-jmiller-stsci-edu---77689c6d",
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(v.volume_context["user"], "jmiller-stsci-edu---77689c6d");
    let notes = events.wait_posted(1).await;
    assert!(
        notes[0].note.contains("keyed by the claim name"),
        "{notes:?}"
    );
    // A cluster that does not answer, or a PVC it does not know: retry, no home.
    let claims = Arc::new(FakePvcReader::default());
    let (c2, _) = service(d.path());
    let c2 = c2.with_pvc_reader(claims.clone());
    let e = c2
        .create(jhub_create(d.path(), "pvc-b", "claim-bob", &[]))
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::Unavailable);
    claims.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let e = c2
        .create(jhub_create(d.path(), "pvc-b", "claim-bob", &[]))
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::Unavailable);
    assert!(!d.path().join("share/users/bob").exists());
    // A class that says not to read the PVC never asks.
    let gets = claims.gets.load(std::sync::atomic::Ordering::SeqCst);
    let v = c2
        .create(jhub_create(
            d.path(),
            "pvc-b",
            "claim-bob",
            &[("userAnnotation", "")],
        ))
        .await
        .unwrap();
    assert_eq!(v.volume_context["user"], "bob");
    assert_eq!(claims.gets.load(std::sync::atomic::Ordering::SeqCst), gets);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_server_shares_its_users_home_and_never_deletes_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("share")).unwrap();
    let claims = Arc::new(
        FakePvcReader::default()
            .with(
                "jhub",
                "claim-alice",
                &[("hub.jupyter.org/username", "alice")],
            )
            .with(
                "jhub",
                "claim-alice--gpu",
                &[
                    ("hub.jupyter.org/username", "alice"),
                    ("hub.jupyter.org/servername", "gpu"),
                ],
            ),
    );
    let (c, _) = service(d.path());
    let c = c.with_pvc_reader(claims);
    let main = c
        .create(jhub_create(
            d.path(),
            "pvc-main",
            "claim-alice",
            &[("onDelete", "delete")],
        ))
        .await
        .unwrap();
    let gpu = c
        .create(jhub_create(
            d.path(),
            "pvc-gpu",
            "claim-alice--gpu",
            &[("onDelete", "delete")],
        ))
        .await
        .unwrap();
    let (m, g) = (
        HomeVolume::parse_id(&main.volume_id).unwrap(),
        HomeVolume::parse_id(&gpu.volume_id).unwrap(),
    );
    assert_eq!((m.user.name(), g.user.name()), ("alice", "alice"));
    assert_eq!(
        (m.on_delete, g.on_delete),
        (OnDelete::Delete, OnDelete::Retain)
    );
    let share = d.path().join("share");
    let meta = homes::read_meta(&m, &share).unwrap().unwrap();
    assert_eq!(
        (meta.volume_name.as_str(), meta.pvc_name.as_deref()),
        ("pvc-main", Some("claim-alice"))
    );
    std::fs::write(share.join("users/alice/keep"), b"x").unwrap();
    c.delete(DeleteVolumeRequest {
        volume_id: gpu.volume_id.clone(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(std::fs::read(share.join("users/alice/keep")).unwrap(), b"x");
}

#[test]
fn archives_are_stamped_by_the_clock() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("share")).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339("2031-05-06T07:08:09Z")
        .unwrap()
        .to_utc();
    let (c, _) = service(d.path());
    let c = c.with_clock(Arc::new(hubfs_quota::clock::FakeClock::new(at)));
    let mut r = create(d.path(), "pvc-e", 1 << 20);
    r.parameters.insert("onDelete".into(), "archive".into());
    let v = c.provision(r, None).unwrap();
    let vol = HomeVolume::parse_id(&v.volume_id).unwrap();
    let meta = homes::read_meta(&vol, &d.path().join("share"))
        .unwrap()
        .unwrap();
    assert_eq!(meta.created, "2031-05-06T07:08:09Z");
    c.delete(DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .unwrap();
    assert!(d
        .path()
        .join("share/users/erin.archived-20310506T070809Z")
        .is_dir());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_is_idempotent_and_tells_the_pvc() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("share")).unwrap();
    let (c, events) = service(d.path());
    let (c2, root) = (c.clone(), d.path().to_owned());
    let (a, b, conflict, busy) = tokio::task::spawn_blocking(move || {
        let a = c2.provision(create(&root, "pvc-e", 1 << 20), None).unwrap();
        let b = c2.provision(create(&root, "pvc-e", 1 << 20), None).unwrap();
        let conflict = c2
            .provision(create(&root, "pvc-e", 2 << 20), None)
            .unwrap_err();
        let _g = c2.inner.inflight.begin("user/erin").unwrap();
        let busy = c2
            .provision(create(&root, "pvc-e", 1 << 20), None)
            .unwrap_err();
        (a, b, conflict, busy)
    })
    .await
    .unwrap();
    assert_eq!(a.volume_id, b.volume_id);
    assert_eq!(code(conflict), Code::AlreadyExists);
    assert_eq!(code(busy), Code::Aborted);
    assert_eq!(a.volume_context["pvcName"], "claim-erin");
    let posted = events.wait_posted(2).await;
    assert_eq!(posted.len(), 2, "one notice per successful CreateVolume");
    assert!(posted
        .iter()
        .all(|n| n.reason == hubfs_quota::events::Reason::HomeProvisioned));
    // Background posts land in any order.
    let mut created: Vec<bool> = posted.iter().map(|n| n.note.contains("created")).collect();
    created.sort_unstable();
    assert_eq!(
        created,
        [false, true],
        "one created, one reused: {posted:?}"
    );
    let _ = c;
}
