//! `cyphonic lab nat-matrix`: NAT traversal on real kernel NAT, end to end
//! (needs root, as CI has).

mod common;

#[test]
fn lab_nat_matrix_passes() {
    common::lab_passes("nat-matrix");
}
