//! Row PM: the bare Pingora floor with the allocator Gatehouse ships with (mimalloc). Against
//! P, Gatehouse's ratio includes the allocator's gain; against PM it is Gatehouse's own code.
//!
//! `bare_proxy_mimalloc LISTEN UPSTREAM [THREADS]`

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "bare/mod.rs"]
mod bare;

fn main() {
    bare::main()
}
