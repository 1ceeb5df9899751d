//! A read-only view of guest memory as the writer sees it: regions laid end to
//! end, addressed by page index.

use thaw_format::manifest::validate_regions;
use thaw_format::{FormatError, PageRun, Region};

/// One region of guest memory handed to the writer.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRegion<'a> {
    pub guest_phys_addr: u64,
    pub bytes: &'a [u8],
}

pub(crate) struct MemoryView<'a> {
    regions: &'a [MemoryRegion<'a>],
    /// Index of each region's first page in the concatenation.
    first_page: Vec<u64>,
    page_size: u64,
    total_pages: u64,
}

impl<'a> MemoryView<'a> {
    pub(crate) fn new(
        regions: &'a [MemoryRegion<'a>],
        page_size: u64,
    ) -> Result<Self, FormatError> {
        thaw_format::manifest::validate_page_size(page_size)?;
        validate_regions(&Self::describe(regions), page_size)?;
        let mut first_page = Vec::with_capacity(regions.len());
        let mut total_pages = 0;
        for r in regions {
            first_page.push(total_pages);
            total_pages += r.bytes.len() as u64 / page_size;
        }
        Ok(Self {
            regions,
            first_page,
            page_size,
            total_pages,
        })
    }

    pub(crate) fn describe(regions: &[MemoryRegion<'_>]) -> Vec<Region> {
        regions
            .iter()
            .map(|r| Region {
                guest_phys_addr: r.guest_phys_addr,
                size: r.bytes.len() as u64,
            })
            .collect()
    }

    pub(crate) fn total_pages(&self) -> u64 {
        self.total_pages
    }

    fn region_of(&self, page: u64) -> usize {
        self.first_page.partition_point(|&first| first <= page) - 1
    }

    pub(crate) fn page(&self, page: u64) -> &'a [u8] {
        let r = self.region_of(page);
        let off = ((page - self.first_page[r]) * self.page_size) as usize;
        &self.regions[r].bytes[off..off + self.page_size as usize]
    }

    /// The bytes of a run when it lies inside one region (no copy needed).
    pub(crate) fn run(&self, run: &PageRun) -> Option<&'a [u8]> {
        let r = self.region_of(run.start);
        let region_end = self.first_page[r] + self.regions[r].bytes.len() as u64 / self.page_size;
        (run.end() <= region_end).then(|| {
            let off = ((run.start - self.first_page[r]) * self.page_size) as usize;
            &self.regions[r].bytes[off..off + (run.len * self.page_size) as usize]
        })
    }

    /// The bytes of several runs, copied end to end.
    pub(crate) fn gather(&self, runs: &[PageRun]) -> Vec<u8> {
        let pages: u64 = runs.iter().map(|r| r.len).sum();
        let mut out = Vec::with_capacity((pages * self.page_size) as usize);
        for run in runs {
            match self.run(run) {
                Some(bytes) => out.extend_from_slice(bytes),
                None => (run.start..run.end()).for_each(|p| out.extend_from_slice(self.page(p))),
            }
        }
        out
    }
}
