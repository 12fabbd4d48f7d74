//! Asking for a backend that is not compiled in names the feature to enable.
//! CI runs this file with `--no-default-features --features file` too.

use omniq::{BackendKind, Error, OmniQ, Settings};

#[tokio::test]
async fn a_backend_not_compiled_in_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [BackendKind::File, BackendKind::Sqlite] {
        let settings = Settings::builder()
            .backend(kind)
            .base_dir(dir.path())
            .build()
            .unwrap();
        let compiled = omniq::compiled_backends().contains(&kind);
        match OmniQ::open(settings).await {
            Ok(_) => assert!(compiled, "{kind} opened without being compiled in"),
            Err(Error::Unsupported(message)) => {
                assert!(!compiled, "{kind} is compiled in but refused: {message}");
                assert!(message.contains(&format!("`{kind}` feature")), "{message}");
            }
            Err(other) => panic!("{kind}: {other}"),
        }
    }
}

#[test]
fn the_default_backend_is_the_first_compiled_in() {
    let expected = if cfg!(feature = "file") {
        BackendKind::File
    } else {
        BackendKind::Sqlite
    };
    assert_eq!(omniq::chosen_backend(&Settings::default()).unwrap(), expected);
}

#[test]
fn a_bad_log_filter_names_omniq_log() {
    let settings = Settings::builder().log("omniq=loudest").build().unwrap();
    match omniq::init_logging(&settings) {
        Err(Error::InvalidConfig { name, .. }) => assert_eq!(name, "OMNIQ_LOG"),
        other => panic!("expected InvalidConfig for OMNIQ_LOG, got {other:?}"),
    }
}
