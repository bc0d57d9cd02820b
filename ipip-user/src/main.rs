fn main() {
    match ipip_user::datapath::Datapath::load() {
        Ok(_) => println!("loaded"),
        Err(e) => {
            println!("{e}");
            let mut s: &dyn std::error::Error = &e;
            while let Some(x) = s.source() { println!("  {x}"); s = x; }
        }
    }
}
