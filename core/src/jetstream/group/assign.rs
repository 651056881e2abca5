//! Which member works which partition: every member computes the same answer from the same
//! member list, with no coordinator.
//!
//! Rendezvous hashing with a cap: each partition goes to the member ranked highest for it
//! (FNV-1a-32 of `"{member}/{partition}"`) among those not yet holding their share,
//! partitions taken in order; a share is `floor(P / N)`, and the first `P mod N` members to
//! reach it may take one more. The shares differ by at most one partition, and a member that
//! joins or leaves moves few partitions (those it ranks highest for, or held).

/// FNV-1a-32 of `member/partition`.
fn weight(member: &str, partition: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let partition = partition.to_string();
    for byte in member
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(partition.bytes())
    {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The member (an index into `members`, which must be sorted and without duplicates) of each
/// of `partitions` partitions; empty when there is no member.
pub(crate) fn assign(members: &[String], partitions: u32) -> Vec<usize> {
    if members.is_empty() {
        return Vec::new();
    }
    let n = members.len();
    let floor = partitions as usize / n;
    let extra = partitions as usize % n;
    let mut extras_taken = 0;
    let mut load = vec![0usize; n];
    let mut owners = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let mut ranked: Vec<(u32, usize)> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (weight(m, partition), i))
            .collect();
        // Highest weight first; ties by member order, so every member agrees.
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let owner = ranked
            .iter()
            .map(|&(_, i)| i)
            .find(|&i| load[i] < floor || (load[i] == floor && extras_taken < extra))
            .unwrap_or(ranked[0].1);
        if load[owner] == floor {
            extras_taken += 1;
        }
        load[owner] += 1;
        owners.push(owner);
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn shares_differ_by_at_most_one() {
        for n in 1..=7 {
            let names: Vec<String> = (0..n).map(|i| format!("member-{i}")).collect();
            let m = members(&names.iter().map(String::as_str).collect::<Vec<_>>());
            for partitions in [1u32, 4, 16, 17, 64] {
                let owners = assign(&m, partitions);
                assert_eq!(owners.len(), partitions as usize);
                let mut load = vec![0; n];
                for o in owners {
                    load[o] += 1;
                }
                let (min, max) = (load.iter().min().unwrap(), load.iter().max().unwrap());
                if partitions as usize >= n {
                    assert!(max - min <= 1, "{n} members, {partitions}: {load:?}");
                }
            }
        }
    }

    #[test]
    fn every_member_computes_the_same_and_a_join_moves_few() {
        let three = members(&["a-1", "b-2", "c-3"]);
        assert_eq!(assign(&three, 16), assign(&three.clone(), 16));
        let four = members(&["a-1", "b-2", "c-3", "d-4"]);
        let before: Vec<&str> = assign(&three, 16)
            .into_iter()
            .map(|i| three[i].as_str())
            .collect();
        let after: Vec<&str> = assign(&four, 16)
            .into_iter()
            .map(|i| four[i].as_str())
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // The newcomer's fair share is 4; a few more may move to keep the caps.
        assert!(
            (4..=8).contains(&moved),
            "{moved} moved: {before:?} -> {after:?}"
        );
        assert!(assign(&[], 16).is_empty());
    }
}
