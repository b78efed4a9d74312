use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::state::{Consume, State};

const MIN: Duration = Duration::from_secs(60);

/// A state on a manual clock and its file in a fresh folder.
fn setup() -> (tempfile::TempDir, ManualClock, State, StateFile) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_700_000_000);
    let state = State::memory(Arc::new(clock.clone()));
    let file = state.file(dir.path().join(FILE_NAME)).unwrap();
    (dir, clock, state, file)
}

/// Another process on the same folder and clock: a restart.
fn restart(dir: &tempfile::TempDir, clock: &ManualClock) -> (State, StateFile, Restored) {
    let state = State::memory(Arc::new(clock.clone()));
    let file = state.file(dir.path().join(FILE_NAME)).unwrap();
    let restored = file.load().unwrap();
    (state, file, restored)
}

fn code(payload: &[u8], digest: u8, attempts: u32) -> CodeRecord {
    CodeRecord {
        payload: payload.to_vec(),
        digest: [digest; 32],
        attempts,
    }
}

#[tokio::test]
async fn counters_codes_and_keys_survive_a_round_trip_with_their_deadlines() {
    let (dir, clock, s, file) = setup();
    for _ in 0..3 {
        s.hit("otpgate:rl:send:a@x.example", 15 * MIN)
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(10));
    assert!(
        s.put_new("otpgate:cool:a@x.example", b"1", MIN)
            .await
            .unwrap()
    );
    s.put_code("otpgate:pin:tx1", code(b"payload", 7, 5), 10 * MIN, true)
        .await
        .unwrap();
    let wrong = s.consume_code("otpgate:pin:tx1", &[1; 32]).await.unwrap();
    assert_eq!(wrong, Consume::Rejected { left: 4 });
    s.swap("a key listed nowhere", b"\x00\xffopaque", MIN)
        .await
        .unwrap();
    assert_eq!(file.save().unwrap(), Saved::Written(4));

    let (r, _, restored) = restart(&dir, &clock);
    assert_eq!(
        restored,
        Restored {
            entries: 4,
            expired: 0
        }
    );
    assert_eq!(r.count("otpgate:rl:send:a@x.example").await.unwrap(), 3);
    assert!(
        !r.put_new("otpgate:cool:a@x.example", b"1", MIN)
            .await
            .unwrap(),
        "the cooldown still runs"
    );
    assert_eq!(
        r.get("a key listed nowhere").await.unwrap().as_deref(),
        Some(&b"\x00\xffopaque"[..])
    );
    assert_eq!(
        r.consume_code("otpgate:pin:tx1", &[1; 32]).await.unwrap(),
        Consume::Rejected { left: 3 },
        "the attempts left are kept"
    );
    assert_eq!(
        r.consume_code("otpgate:pin:tx1", &[7; 32]).await.unwrap(),
        Consume::Accepted(b"payload".to_vec())
    );
    // The window keeps its original end (15 minutes after the first hit), not a new one.
    assert_eq!(
        r.hit("otpgate:rl:send:a@x.example", 15 * MIN)
            .await
            .unwrap(),
        4
    );
    clock.advance(15 * MIN - Duration::from_secs(10));
    assert_eq!(r.count("otpgate:rl:send:a@x.example").await.unwrap(), 0);
    assert_eq!(
        r.hit("otpgate:rl:send:a@x.example", 15 * MIN)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn expired_entries_are_dropped_on_restore() {
    let (dir, clock, s, file) = setup();
    s.hit("short", MIN).await.unwrap();
    s.put_new("ban", b"1", 5 * MIN).await.unwrap();
    s.put_code("pin", code(b"p", 1, 5), 2 * MIN, true)
        .await
        .unwrap();
    assert_eq!(file.save().unwrap(), Saved::Written(3));
    clock.advance(3 * MIN);
    let (r, file, restored) = restart(&dir, &clock);
    assert_eq!(
        restored,
        Restored {
            entries: 1,
            expired: 2
        }
    );
    assert_eq!(r.count("short").await.unwrap(), 0);
    assert_eq!(r.peek_code("pin").await.unwrap(), None);
    assert!(r.get("ban").await.unwrap().is_some());
    let State::Memory(m) = &r else {
        panic!("a memory state")
    };
    assert_eq!(m.len(), 1, "nothing expired was put back");
    // Entries that expire while running are left out of the next save.
    clock.advance(3 * MIN);
    r.hit("new", MIN).await.unwrap();
    assert_eq!(file.save().unwrap(), Saved::Written(1));
}

#[tokio::test]
async fn a_corrupt_or_foreign_file_is_refused_whole_and_nothing_is_restored() {
    let (dir, clock, s, file) = setup();
    s.hit("ip", MIN).await.unwrap();
    file.save().unwrap();
    let good = std::fs::read_to_string(file.path()).unwrap();
    let bad_digest = good.replace(
        "\"value\":{\"counter\":1}",
        "\"value\":{\"code\":{\"payload\":\"\",\"digest\":\"AAAA\",\"attempts\":1}}",
    );
    assert_ne!(bad_digest, good);
    for (contents, what) in [
        (
            String::from("{\"version\":1,\"saved_ms\":1,\"entries\":[{\"key\":"),
            "truncated",
        ),
        (String::from("\u{0}\u{1}garbage"), "not JSON"),
        (
            good.replace("\"version\":1", "\"version\":2"),
            "another version",
        ),
        (
            good.replace("\"counter\"", "\"gauge\""),
            "an unknown kind of value",
        ),
        (bad_digest, "a digest of the wrong length"),
        (good.replace("\"value\"", "\"valu\""), "a missing field"),
    ] {
        std::fs::write(file.path(), &contents).unwrap();
        let r = State::memory(Arc::new(clock.clone()));
        let f = r.file(dir.path().join(FILE_NAME)).unwrap();
        let err = f.load().expect_err(what);
        assert!(err.to_string().contains(FILE_NAME), "{what}: {err}");
        let State::Memory(m) = &r else {
            panic!("a memory state")
        };
        assert!(m.is_empty(), "{what}: nothing restored");
    }
    // A missing file is a first start: empty, no error.
    std::fs::remove_file(file.path()).unwrap();
    let (r, _, restored) = restart(&dir, &clock);
    assert_eq!(restored, Restored::default());
    assert_eq!(r.count("ip").await.unwrap(), 0);
}

#[tokio::test]
async fn the_file_is_private_and_replaced_whole() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, _, s, file) = setup();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // An earlier file and an interrupted save's leftover, both readable by everyone.
    let tmp = dir.path().join(format!("{FILE_NAME}.tmp"));
    for p in [file.path(), tmp.as_path()] {
        std::fs::write(p, b"old").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    s.hit("ip", MIN).await.unwrap();
    assert_eq!(file.save().unwrap(), Saved::Written(1));
    assert_eq!(mode(file.path()), 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [FILE_NAME], "no temporary file is left behind");
    // A file that cannot be written (its folder is a file): the error names it, and the state
    // is not marked saved, so the next save to a good place writes it.
    std::fs::write(dir.path().join("plain"), b"").unwrap();
    let State::Memory(m) = &s else {
        panic!("a memory state")
    };
    let blocked = StateFile::new(dir.path().join("plain").join(FILE_NAME), m.clone());
    let err = blocked.save().unwrap_err();
    assert!(err.to_string().contains("plain/state.json"), "{err}");
    assert!(matches!(blocked.save(), Err(StateError::File { .. })));
}

#[tokio::test]
async fn saves_only_when_something_changed() {
    let (_dir, clock, s, file) = setup();
    assert_eq!(file.save().unwrap(), Saved::Unchanged, "nothing yet");
    assert!(!file.path().exists());
    s.hit("ip", MIN).await.unwrap();
    assert_eq!(file.save().unwrap(), Saved::Written(1));
    assert_eq!(file.save().unwrap(), Saved::Unchanged);
    // Reads and the sweep change nothing a save would write.
    s.count("ip").await.unwrap();
    s.get("ip").await.unwrap();
    s.peek_code("none").await.unwrap();
    clock.advance(2 * MIN);
    s.sweep();
    assert_eq!(file.save().unwrap(), Saved::Unchanged);
    // Writes do, also removals: a used code must not come back after a restart.
    s.put_code("pin", code(b"p", 1, 5), MIN, true)
        .await
        .unwrap();
    assert_eq!(file.save().unwrap(), Saved::Written(1));
    s.consume_code("pin", &[1; 32]).await.unwrap();
    assert_eq!(file.save().unwrap(), Saved::Written(0));
    let text = std::fs::read_to_string(file.path()).unwrap();
    assert!(text.contains("\"entries\":[]"), "{text}");
}

#[test]
fn writes_during_a_save_are_in_this_save_or_the_next() {
    let (dir, clock, s, file) = setup();
    let State::Memory(m) = &s else {
        panic!("a memory state")
    };
    std::thread::scope(|scope| {
        for t in 0..4 {
            let m = m.clone();
            scope.spawn(move || {
                for _ in 0..500 {
                    m.hit(&format!("k{t}"), MIN);
                }
            });
        }
        for _ in 0..20 {
            file.save().unwrap();
        }
    });
    file.save().unwrap();
    let (r, _, restored) = restart(&dir, &clock);
    assert_eq!(restored.entries, 4);
    let State::Memory(r) = &r else {
        panic!("a memory state")
    };
    for t in 0..4 {
        assert_eq!(r.count(&format!("k{t}")), 500);
    }
}
