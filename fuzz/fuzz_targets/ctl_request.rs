//! The control protocol parser: any bytes a local client writes to the engine's socket must parse
//! or be rejected without a panic, and whatever parses must survive a round trip.

#![no_main]

use engine_api::control::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The raw serde path the engine's parser is built on.
    let _ = serde_json::from_slice::<Request>(data);

    if let Ok(request) = Request::parse(data) {
        let line = request.to_line();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(Request::parse(&line).ok(), Some(request));
    }
    if let Ok(response) = Response::parse(data) {
        let line = response.to_line();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(Response::parse(&line).ok(), Some(response));
    }
});
