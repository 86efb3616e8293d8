//! Where things live: the only hash that places a market, on a data shard and on an instance.
//!
//! Both tokens of a market go to one shard (a `price_change` frame carries both), so the shard
//! is a function of the condition id alone. FNV-1a is stable across builds and platforms,
//! unlike `std`'s randomly seeded hasher.
//!
//! Instances (`[selection] partition = "I/N"`) take the same FNV-1a hash through the splitmix64
//! finaliser before `mod N`: with the raw hash, `partition = "0/2"` would hold only even
//! hashes, and two data shards (`hash mod 2`) would then put every market on shard 0. The mixed
//! value is independent of the shard count, so an instance's markets never move when its
//! layout changes. Both recipes are pinned by tests: changing either moves markets.

/// FNV-1a (64-bit) of the condition id: the stable routing hash.
pub fn routing_hash(market: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in market.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The data shard (0..shards) that owns `market`.
pub fn shard_for(market: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    (routing_hash(market) % shards as u64) as usize
}

/// The instance (0..instances) that carries `market`: splitmix64's finaliser of
/// [`routing_hash`], mod `instances`.
pub fn partition_for(market: &str, instances: u32) -> u32 {
    if instances <= 1 {
        return 0;
    }
    let mut z = routing_hash(market);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % u64::from(instances)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_for_is_stable_and_spreads() {
        assert_eq!(shard_for("0xabc", 1), 0);
        assert_eq!(shard_for("0xabc", 4), shard_for("0xabc", 4));
        // Pinned values (computed independently): a change would move every market on upgrade.
        let m = "0x78443f961b9a65869dcb39359de9960165c7e5cbad0904eac7f29cd77872a63b";
        assert_eq!((shard_for(m, 7), shard_for(m, 2)), (5, 0));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("0x{i:064x}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn partition_for_is_pinned_and_independent_of_shards() {
        let m = "0x78443f961b9a65869dcb39359de9960165c7e5cbad0904eac7f29cd77872a63b";
        assert_eq!(partition_for(m, 1), 0);
        assert_eq!((partition_for(m, 2), partition_for(m, 3), partition_for(m, 7)), (1, 0, 0));
        // Every (instance, shard) cell of a 2 x 2 split gets markets: the raw hash would leave
        // instance 0 with shard 0 only.
        let mut cells = [[0usize; 2]; 2];
        for i in 0..4000 {
            let m = format!("0x{i:064x}");
            cells[partition_for(&m, 2) as usize][shard_for(&m, 2)] += 1;
        }
        assert!(cells.iter().flatten().all(|&c| c > 800), "{cells:?}");
    }
}
