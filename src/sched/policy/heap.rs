//! A binary min-heap of VMs that can also find and remove any VM by its
//! index: the fair queue's ordered sets, in one contiguous Vec each (a
//! `BTreeSet` of the same entries took twice as long per slice).

/// VMs ordered by a key (ties by VM index), each at most once.
#[derive(Debug, Clone)]
pub struct IndexedHeap<K> {
    entries: Vec<(K, usize)>,
    /// Per VM: where it is in `entries`, or `ABSENT`.
    position: Vec<usize>,
}

const ABSENT: usize = usize::MAX;

impl<K: Ord + Copy> IndexedHeap<K> {
    /// An empty heap for VMs `0..vms`.
    pub fn new(vms: usize) -> Self {
        Self { entries: Vec::with_capacity(vms), position: vec![ABSENT; vms] }
    }

    /// Whether `vm` is in it.
    pub fn contains(&self, vm: usize) -> bool {
        self.position[vm] != ABSENT
    }

    /// The VM with the smallest key, and its key.
    pub fn peek(&self) -> Option<(K, usize)> {
        self.entries.first().copied()
    }

    /// The VM with the smallest key other than `skip`.
    pub fn first_other_than(&self, skip: usize) -> Option<usize> {
        match self.entries.first() {
            Some(&(_, vm)) if vm != skip => Some(vm),
            // The runner-up of a heap is one of the root's children.
            _ => self.entries.iter().skip(1).take(2).min().map(|&(_, vm)| vm),
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (K, usize)> + '_ {
        self.entries.iter().copied()
    }

    /// Adds `vm` (which must not be in it).
    pub fn push(&mut self, vm: usize, key: K) {
        debug_assert!(!self.contains(vm), "VM {vm} is in the heap already");
        self.entries.push((key, vm));
        self.position[vm] = self.entries.len() - 1;
        self.sift_up(self.entries.len() - 1);
    }

    /// Takes the VM with the smallest key out.
    pub fn pop(&mut self) -> Option<(K, usize)> {
        let &(key, vm) = self.entries.first()?;
        self.remove(vm);
        Some((key, vm))
    }

    /// Takes `vm` out, if it is in; returns its key.
    pub fn remove(&mut self, vm: usize) -> Option<K> {
        let at = std::mem::replace(&mut self.position[vm], ABSENT);
        if at == ABSENT {
            return None;
        }
        let (key, _) = self.entries.swap_remove(at);
        if at < self.entries.len() {
            let moved = self.entries[at].1;
            self.position[moved] = at;
            // The entry moved into the hole may belong above it or below it.
            self.sift_up(at);
            self.sift_down(self.position[moved]);
        }
        Some(key)
    }

    /// Takes every VM out.
    pub fn clear(&mut self) {
        for &(_, vm) in &self.entries {
            self.position[vm] = ABSENT;
        }
        self.entries.clear();
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.entries[at] >= self.entries[parent] {
                break;
            }
            self.swap(at, parent);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let (left, right) = (2 * at + 1, 2 * at + 2);
            let mut smallest = at;
            if left < self.entries.len() && self.entries[left] < self.entries[smallest] {
                smallest = left;
            }
            if right < self.entries.len() && self.entries[right] < self.entries[smallest] {
                smallest = right;
            }
            if smallest == at {
                break;
            }
            self.swap(at, smallest);
            at = smallest;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.entries.swap(a, b);
        self.position[self.entries[a].1] = a;
        self.position[self.entries[b].1] = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_pops_in_key_order_through_pushes_and_removals_anywhere() {
        let mut heap = IndexedHeap::new(64);
        let mut model = std::collections::BTreeSet::new();
        let mut seed = 1u64;
        let mut random = |bound: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % bound
        };
        for _ in 0..20_000 {
            let vm = random(64) as usize;
            match random(3) {
                0 if !heap.contains(vm) => {
                    let key = random(50);
                    heap.push(vm, key);
                    model.insert((key, vm));
                }
                1 => {
                    let removed = heap.remove(vm);
                    assert_eq!(removed.is_some(), model.iter().any(|&(_, other)| other == vm));
                    model.retain(|&(_, other)| other != vm);
                }
                _ => assert_eq!(heap.pop(), model.pop_first()),
            }
            assert_eq!(heap.peek(), model.first().copied());
            let skip = random(64) as usize;
            let other = model.iter().map(|&(_, vm)| vm).find(|&vm| vm != skip);
            assert_eq!(heap.first_other_than(skip), other);
        }
        heap.clear();
        assert_eq!(heap.peek(), None);
        assert!(!heap.contains(0));
    }
}
