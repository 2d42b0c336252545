//! Fuzzes everything the client parses from a server: the transmission reply stream (with
//! a read, a block status and a second read in flight) and the option-phase messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ferry_nbd::proto;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            ferry_nbd::client::fuzzing::replies(rest, true);
        }
        1 => {
            ferry_nbd::client::fuzzing::replies(rest, false);
        }
        2 => {
            let _ = proto::OptReplyHeader::parse(rest);
            let _ = proto::parse_info(rest);
            let _ = proto::parse_server(rest);
            let _ = proto::parse_meta_context(rest);
            let _ = proto::parse_go(rest);
            let _ = proto::parse_meta_query(rest);
        }
        _ => {
            let _ = proto::ReplyHeader::parse(rest);
            let _ = proto::parse_error_chunk(proto::reply::ERROR_OFFSET, rest);
            let _ = proto::parse_hole(rest);
            if let Ok(bs) = proto::parse_block_status(rest) {
                let _ = proto::check_block_status(&bs, 512, 1 << 20);
            }
        }
    }
});
