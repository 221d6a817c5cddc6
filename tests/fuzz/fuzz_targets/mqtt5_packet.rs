#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet_fuzz::mqtt5_packet(data));
