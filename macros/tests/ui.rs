//! Compile-time errors of `#[derive(NatsEvent)]`: each case in `tests/ui/` must fail with the
//! message checked in beside it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
