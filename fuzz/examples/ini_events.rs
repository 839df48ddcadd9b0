//! Print `mkosi_config::ini::parse`'s events for each file as one JSON line
//! (`{"file":…,"events":[[section,key,value],…]}` with `["Section","",""]` for
//! a section end, or `{"file":…,"error":…}`), for `diff-ini.py`.
use serde_json::json;

fn main() {
    for file in std::env::args().skip(1) {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let out = match mkosi_config::ini::parse(&text, &|_| true) {
            Ok(events) => {
                let ev: Vec<_> = events
                    .into_iter()
                    .map(|e| match e {
                        mkosi_config::ini::Event::Setting { section, key, value, .. } => json!([section, key, value]),
                        mkosi_config::ini::Event::SectionEnd { section, .. } => json!([section, "", ""]),
                    })
                    .collect();
                json!({"file": file, "events": ev})
            }
            Err(e) => json!({"file": file, "error": e.to_string()}),
        };
        println!("{out}");
    }
}
