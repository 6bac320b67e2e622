//! Which samples a pass visits, in what order, and the position of each in the epoch (the
//! position seeds the sample's augmentation): the whole list for a single process, or one
//! rank's share of it in a data-parallel job, as `torch.utils.data.DistributedSampler` takes it.

/// The samples one pass visits, in order, with each visit's position in the epoch's (unsharded)
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visits {
    /// Indices into the pass's sample list.
    pub order: Vec<usize>,
    /// `positions[i]`: where `order[i]` stands in the whole epoch's order.
    pub positions: Vec<usize>,
}

impl Visits {
    /// Every sample of `order`, at its own position.
    pub fn all(order: Vec<usize>) -> Visits {
        let positions = (0..order.len()).collect();
        Visits { order, positions }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// This process's part of a job of `world` processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// A single process: everything.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// Training: `DistributedSampler` with `drop_last=False`. The epoch's order (the same
    /// seeded shuffle on every rank) is padded by repeating it from its start up to a multiple
    /// of the world size, and this rank takes every `world`-th position from `rank` on, so the
    /// shards are disjoint but for the padding and all `ceil(n / world)` long: every rank takes
    /// the same number of steps. A batch of `b` on each rank is then, over the ranks, the batch of
    /// `world × b` consecutive samples a single process would take. Padding positions continue
    /// past the end (`n`, `n + 1`, ...), so a repeated sample gets its own augmentation.
    pub fn padded(&self, order: &[usize]) -> Visits {
        let n = order.len();
        if n == 0 {
            return Visits::all(Vec::new());
        }
        let total = self.padded_len(n) * self.world;
        let positions: Vec<usize> = (self.rank..total).step_by(self.world).collect();
        Visits { order: positions.iter().map(|&p| order[p % n]).collect(), positions }
    }

    /// Evaluation: every `world`-th sample from `rank` on, without padding, so that over the
    /// ranks each sample is evaluated exactly once (shards differ in length by at most one).
    pub fn strided(&self, order: &[usize]) -> Visits {
        let positions: Vec<usize> = (self.rank..order.len()).step_by(self.world).collect();
        Visits { order: positions.iter().map(|&p| order[p]).collect(), positions }
    }

    /// Length of each rank's training shard of `n` samples: `ceil(n / world)`.
    pub fn padded_len(&self, n: usize) -> usize {
        n.div_ceil(self.world)
    }

    /// The largest evaluation shard of `n` samples.
    pub fn strided_max_len(&self, n: usize) -> usize {
        n.div_ceil(self.world)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_visits_everything_in_order() {
        let order = vec![4, 2, 0, 3, 1];
        assert_eq!(Shard::WHOLE.padded(&order), Visits::all(order.clone()));
        assert_eq!(Shard::WHOLE.strided(&order), Visits::all(order.clone()));
        assert_eq!(Visits::all(order).positions, [0, 1, 2, 3, 4]);
    }

    /// DistributedSampler's rule: `indices += indices[:padding]; indices[rank:total:world]`.
    #[test]
    fn training_shards_are_padded_disjoint_and_equal() {
        let order: Vec<usize> = vec![9, 3, 7, 1, 5, 0, 8, 2, 6, 4];
        let shards: Vec<Visits> = (0..3).map(|rank| Shard { rank, world: 3 }.padded(&order)).collect();
        assert_eq!(shards[0].order, [9, 1, 8, 4]);
        assert_eq!(shards[1].order, [3, 5, 2, 9]);
        assert_eq!(shards[2].order, [7, 0, 6, 3]);
        assert_eq!(shards[1].positions, [1, 4, 7, 10]);
        for s in &shards {
            assert_eq!(s.len(), Shard { rank: 0, world: 3 }.padded_len(order.len()));
        }
        // Without the two padding visits, every sample exactly once.
        let mut seen: Vec<usize> = shards
            .iter()
            .flat_map(|s| s.order.iter().zip(&s.positions).filter(|(_, &p)| p < order.len()).map(|(&o, _)| o))
            .collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        // Batch j of b on each rank = the single process's batch j of world × b.
        let b = 2;
        for j in 0..2 {
            let mut union: Vec<usize> = shards.iter().flat_map(|s| s.order[j * b..(j + 1) * b].to_vec()).collect();
            let mut single: Vec<usize> = (j * b * 3..(j + 1) * b * 3).map(|p| order[p % 10]).collect();
            union.sort();
            single.sort();
            assert_eq!(union, single, "batch {j}");
        }
    }

    #[test]
    fn evaluation_shards_cover_each_sample_once() {
        let order: Vec<usize> = (0..7).collect();
        let a = Shard { rank: 0, world: 2 }.strided(&order);
        let b = Shard { rank: 1, world: 2 }.strided(&order);
        assert_eq!(a.order, [0, 2, 4, 6]);
        assert_eq!(b.order, [1, 3, 5]);
        assert_eq!(Shard { rank: 1, world: 2 }.strided_max_len(7), 4);
        // More ranks than samples: some shards are empty, none pads.
        assert!(Shard { rank: 3, world: 4 }.strided(&[0, 1]).is_empty());
        assert_eq!(Shard { rank: 3, world: 4 }.padded(&[0, 1]).order, [1]);
        assert!(Shard { rank: 1, world: 2 }.padded(&[]).is_empty());
    }
}
