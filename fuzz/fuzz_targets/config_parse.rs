//! The config parser: any text must parse or be rejected with an error naming the file, without
//! a panic; whatever parses must print (`engine check`'s effective config) as YAML that parses
//! back to the same config.
//!
//! No DNS, files or Argon2 here: the environment resolves only `localhost`, has no key files
//! and turns a passphrase into key bytes directly, so each input runs in microseconds.

#![no_main]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use engine_api::config::{Config, Environment};
use engine_proto::crypto::{Psk, PskError};
use libfuzzer_sys::fuzz_target;

struct FuzzEnvironment;

impl Environment for FuzzEnvironment {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        match host {
            "localhost" => Ok(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no lookups while fuzzing",
            )),
        }
    }

    fn read_key_file(&self, _path: &Path) -> io::Result<String> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no files while fuzzing",
        ))
    }

    fn passphrase_key(&self, passphrase: &str) -> Result<Psk, PskError> {
        if passphrase.is_empty() {
            return Err(PskError::EmptyPassphrase);
        }
        let mut key = [0u8; 32];
        for (i, byte) in passphrase.bytes().enumerate() {
            key[i % 32] ^= byte;
        }
        Ok(Psk::from_bytes(key))
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.yaml");
    let config = match Config::parse_with(path, &text, &FuzzEnvironment) {
        Ok(config) => config,
        Err(err) => {
            assert!(err.to_string().starts_with("fuzz.yaml:"), "{err}");
            return;
        }
    };
    let masked = config.to_masked_yaml();
    let key_line = "\nkey: \"***\"\n";
    assert_eq!(masked.matches(key_line).count(), 1, "{masked}");
    let unmasked = masked.replacen(
        key_line,
        &format!("\nkey: \"{}\"\n", config.key.to_base64()),
        1,
    );
    let again = match Config::parse_with(path, &unmasked, &FuzzEnvironment) {
        Ok(again) => again,
        Err(err) => panic!("the effective config does not parse: {err}\n{unmasked}"),
    };
    assert_eq!(again.name, config.name);
    assert_eq!(again.listen, config.listen);
    assert_eq!(again.key.as_bytes(), config.key.as_bytes());
    assert_eq!(again.transport, config.transport);
    assert_eq!(again.shards, config.shards);
    assert_eq!(again.cpus, config.cpus);
    assert_eq!(again.io, config.io);
    assert_eq!(again.peers, config.peers);
    assert_eq!(again.maps, config.maps);
    assert_eq!(again.allow, config.allow);
    assert_eq!(again.control, config.control);
    assert_eq!(again.log, config.log);
});
