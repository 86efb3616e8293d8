//! Any bytes through the capture and recording line readers: classify each line, parse it as a
//! capture line and as a recording line, unescape frames, and replay them into a store. Nothing
//! may panic; every bad line must be a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polybook::capture::{
    classify_line, parse_line, parse_record_line, replay_record_line, unescape_frame, LineCounts,
};
use polybook::store::{NoSink, StoreConfig};
use polybook::BookStore;

fuzz_target!(|data: &[u8]| {
    let mut counts = LineCounts::default();
    let mut capture = BookStore::new(StoreConfig { auto_track: true, ..StoreConfig::default() });
    let mut recording = BookStore::new(StoreConfig::default());
    for bytes in data.split(|&b| b == b'\n') {
        let Ok(line) = classify_line(bytes, &mut counts) else { continue };
        if let Some(l) = parse_line(line) {
            if let Some(ns) = l.recv_ns {
                capture.set_now_ms(ns / 1_000_000);
                capture.settle(ns / 1_000_000, &mut NoSink);
            }
            capture.apply_frame(l.frame, &mut NoSink);
        }
        let _ = unescape_frame(line);
        if let Ok(Some(rec)) = parse_record_line(line) {
            let _ = replay_record_line(&mut recording, &rec, true, &mut NoSink);
        }
    }
    capture.settle(u64::MAX / 2, &mut NoSink);
    capture.settle(u64::MAX, &mut NoSink);
});
