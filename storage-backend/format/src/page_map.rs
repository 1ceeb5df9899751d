//! Which block holds a given page: the lookup a fault handler makes for every
//! fault, built once per opened checkpoint.

use super::manifest::Manifest;

const ZERO: u32 = u32::MAX;

/// Where a page's contents come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSource {
    Block(u32),
    Zero,
}

/// A dense page-to-block table (4 bytes a page: 1 MiB per GiB of 4 KiB pages).
#[derive(Debug, Clone)]
pub struct PageMap {
    owner: Vec<u32>,
}

impl PageMap {
    /// Builds the table from a validated manifest.
    pub fn new(m: &Manifest) -> Self {
        let mut owner = vec![ZERO; m.total_pages() as usize];
        for (i, b) in m.blocks.iter().enumerate() {
            for page in b.page_iter() {
                owner[page as usize] = i as u32;
            }
        }
        Self { owner }
    }

    /// `None` for a page outside the checkpoint's memory.
    pub fn source(&self, page: u64) -> Option<PageSource> {
        self.owner.get(page as usize).map(|&o| {
            if o == ZERO {
                PageSource::Zero
            } else {
                PageSource::Block(o)
            }
        })
    }
}
