//! Fuzzes the parser of the listing lines an FTP server sends (MLSD, MLST and LIST in
//! POSIX and DOS formats), the suppaftp code the ftp:// backend runs on them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suppaftp::list::ListParser;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    for f in [
        ListParser::parse_mlsd(line),
        ListParser::parse_mlst(line),
        ListParser::parse_posix(line),
        ListParser::parse_dos(line),
    ]
    .into_iter()
    .flatten()
    {
        let _ = (
            f.name(),
            f.size(),
            f.modified(),
            f.is_directory(),
            f.is_file(),
        );
    }
});
