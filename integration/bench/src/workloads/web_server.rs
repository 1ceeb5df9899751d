//! `web-server`: an nginx-like server with two workers on a 2-vCPU guest,
//! restored and put back under load. Browsers arrive in bursts with quiet
//! spells between; each asks for a page (static HTML, or a dynamic page
//! from the shared response cache, filled from an upstream on a miss), then
//! for the page's assets (site-wide CSS and JS, the page's own images)
//! unless the browser still has them. Page popularity is Zipf-like, so a
//! hot set (kernel network and file paths, the worker's request path, the
//! popular pages and shared assets) is touched early in every run and a
//! long tail of rarely asked pages differs from run to run.

use super::content::{Content, TextStyle};
use super::kernel::{KPath, Kernel};
use super::model::Workload;
use super::physical::{Frames, FreeList, Mapping, Physical};
use super::program::{CodeMap, Program, ProgramSize};
use super::rng::{Rng, Zipf};
use super::trace::{merge, Lane, Touch};
use super::Params;

/// A file in the page cache.
struct File {
    pages: Mapping,
}

/// A site page: its HTML file (or dynamic cache entry) and its assets.
struct SitePage {
    html: usize,
    dynamic: bool,
    images: Vec<usize>,
}

pub(super) struct Model {
    kernel: Kernel,
    libc: CodeMap,
    libssl: CodeMap,
    libz: CodeMap,
    nginx: Program,
    workers: [Worker; 2],
    files: Vec<File>,
    site: Vec<SitePage>,
    /// Site-wide stylesheets and scripts (file indices).
    common_assets: Vec<usize>,
    /// Shared response-cache zone: dynamic pages by key, then free slots.
    cache_zone: Mapping,
    /// Shared TLS session cache.
    ssl_sessions: Mapping,
    popularity: Zipf,
    /// Site page index of each popularity rank.
    by_rank: Vec<usize>,
}

/// A request as it reaches the server.
struct Request {
    at: f64,
    /// Site page the browser is showing.
    site: usize,
    /// The static file asked for; `None` for the dynamic page itself.
    file: Option<usize>,
    new_connection: bool,
}

/// Per-worker private memory.
struct Worker {
    connections: Mapping,
    buffers: Mapping,
    gzip_state: Mapping,
    log_buffer: Mapping,
    stack: Mapping,
}

impl Workload for Model {
    const NAME: &'static str = "web-server";
    const DESCRIPTION: &'static str =
        "nginx-like web server, two workers on two vCPUs, restored under load: \
        browser sessions arrive in bursts with quiet spells; each fetches a Zipf-popular page \
        (static HTML from the page cache, or a dynamic page from the shared response cache, \
        from an upstream on a miss) and then its site-wide CSS/JS and images unless cached; \
        TLS, gzip, access logging. Memory: kernel, libc/libssl/libz, nginx, idle daemons, \
        worker heaps, an 8 MiB response cache, ~20 MiB of site files, free memory.";
    const MEMORY_PAGES: usize = 32768;

    fn build(mut phys: Physical, kernel: Kernel, p: &Params, rng: &mut Rng) -> (Self, Frames) {
        let libc = CodeMap::load(&mut phys, p, rng, 450);
        let libssl = CodeMap::load(&mut phys, p, rng, 900);
        let libz = CodeMap::load(&mut phys, p, rng, 30);
        // Other daemons of the guest (sshd, journald, cron): resident, idle here.
        Program::load_many(&mut phys, p, rng, 4, &ProgramSize::IDLE_DAEMON);
        let nginx = Program::load(
            &mut phys,
            p,
            rng,
            &ProgramSize {
                text: 300,
                data: 40,
                heap: 60,
                heap_zero: 0.2,
                stack: 8,
            },
        );
        let mut worker = |rng: &mut Rng| Worker {
            connections: phys.alloc_mixed(p.pages(128), Content::Heap, 0.3, rng),
            buffers: phys.alloc_mixed(p.pages(256), Content::Text(TextStyle::Markup), 0.5, rng),
            gzip_state: phys.alloc_mixed(p.pages(72), Content::Heap, 0.1, rng),
            log_buffer: phys.alloc(p.pages(16), |_| Content::Text(TextStyle::Log)),
            stack: phys.alloc(p.pages(32), |i| {
                if i > 27 {
                    Content::Stack
                } else {
                    Content::Zero
                }
            }),
        };
        let workers = [worker(rng), worker(rng)];
        // Entries are rendered HTML, a share stored gzip'd; free slots are zero.
        let cache_zone = phys.alloc(p.pages(2000), |i| match i % 10 {
            0 | 1 => Content::Media,
            2..=7 => Content::Text(TextStyle::Markup),
            _ => Content::Zero,
        });
        let ssl_sessions = phys.alloc_mixed(p.pages(64), Content::Media, 0.3, rng);

        // The site: HTML pages (some dynamic), site-wide CSS and JS, images.
        // Files came into the page cache in the order they were first asked for
        // before the checkpoint, which has little to do with their popularity.
        let pages_n = p.count(900);
        let mut sizes: Vec<(usize, Content)> = Vec::new();
        for _ in 0..pages_n {
            sizes.push((
                rng.lognormal(3.0, 0.7).ceil() as usize,
                Content::Text(TextStyle::Markup),
            ));
        }
        let common_n = 8;
        for _ in 0..common_n {
            sizes.push((
                rng.lognormal(10.0, 0.6).ceil() as usize,
                Content::Text(TextStyle::Markup),
            ));
        }
        let images_n = p.count(700);
        for _ in 0..images_n {
            sizes.push((
                rng.lognormal(4.0, 0.9).ceil().min(120.0) as usize,
                Content::Media,
            ));
        }
        let mut load_order: Vec<usize> = (0..sizes.len()).collect();
        rng.shuffle(&mut load_order);
        let mut files: Vec<Option<File>> = (0..sizes.len()).map(|_| None).collect();
        for i in load_order {
            let (len, content) = sizes[i];
            files[i] = Some(File {
                pages: phys.alloc(len.max(1), |_| content),
            });
        }
        let files: Vec<File> = files
            .into_iter()
            .map(|f| f.expect("every file loaded"))
            .collect();
        let common_assets: Vec<usize> = (pages_n..pages_n + common_n).collect();
        let site = (0..pages_n)
            .map(|html| SitePage {
                html,
                dynamic: rng.chance(0.25),
                images: (0..rng.range(1, 5))
                    .map(|_| pages_n + common_n + rng.index(images_n))
                    .collect(),
            })
            .collect();
        let mut by_rank: Vec<usize> = (0..pages_n).collect();
        rng.shuffle(&mut by_rank);

        let frames = phys.finish(0.12, rng);
        let model = Model {
            kernel,
            libc,
            libssl,
            libz,
            nginx,
            workers,
            files,
            site,
            common_assets,
            cache_zone,
            ssl_sessions,
            popularity: Zipf::new(pages_n, 0.9),
            by_rank,
        };
        (model, frames)
    }

    fn run(&self, free: &FreeList, p: &Params, mut rng: Rng, speed: f64) -> Vec<Touch> {
        let model = self;
        let duration_us = rng.range(1_900_000, 2_300_000) as f64;
        let mut kernel_lane = model.kernel.resume(&mut rng, speed);
        let mut servings: Vec<Serving> = model
            .workers
            .iter()
            .map(|worker| {
                let mut lane = Lane::new(kernel_lane.now() + rng.lognormal(300.0, 0.5), speed);
                model.nginx.wake(&mut lane, &mut rng);
                Serving {
                    model,
                    worker,
                    lane,
                    next_connection: 0,
                    log_bytes: 0,
                }
            })
            .collect();

        // Browser sessions: bursts of arrivals, quiet spells between.
        let mut arrivals = Vec::new();
        let mut t = rng.exp(30_000.0);
        let rate_per_us = 1.0 / 6_000.0 * p.scale.sqrt();
        while t < duration_us {
            let burst_end = t + rng.exp(150_000.0);
            while t < burst_end.min(duration_us) {
                arrivals.push(t);
                t += rng.exp(1.0 / rate_per_us);
            }
            t = burst_end + rng.exp(120_000.0);
        }
        // Each session asks for its page, then (after the browser parsed it)
        // for the assets it lacks, over a kept-alive connection.
        let mut requests: Vec<Request> = Vec::new();
        for &arrival in &arrivals {
            let site = model.by_rank[model.popularity.sample(&mut rng)];
            let page = &model.site[site];
            requests.push(Request {
                at: arrival,
                site,
                file: (!page.dynamic).then_some(page.html),
                new_connection: true,
            });
            let mut at = arrival + rng.lognormal(25_000.0, 0.5);
            let returning = rng.chance(0.5);
            let mut assets = Vec::new();
            for &css_js in &model.common_assets {
                if !returning && rng.chance(0.7) {
                    assets.push(css_js);
                }
            }
            for &image in &page.images {
                if !returning || rng.chance(0.3) {
                    assets.push(image);
                }
            }
            for asset in assets {
                requests.push(Request {
                    at,
                    site,
                    file: Some(asset),
                    new_connection: false,
                });
                at += rng.lognormal(400.0, 0.8);
            }
        }
        requests.sort_by(|a, b| a.at.total_cmp(&b.at));
        // The idle worker takes the next request (EPOLLEXCLUSIVE wakes one).
        let mut page_cache_tail = free.cursor();
        for (i, r) in requests.iter().enumerate() {
            let s = servings
                .iter_mut()
                .min_by(|a, b| a.lane.now().total_cmp(&b.lane.now()))
                .expect("two workers");
            s.lane.wait_until(r.at);
            s.request(&mut rng, r.file, &model.site[r.site], r.new_connection);
            // The access log grows by a page of page cache now and then.
            if i % 25 == 24 {
                model.kernel.run(&mut s.lane, &mut rng, KPath::Syscall(1));
                s.lane.write(page_cache_tail.take(&mut rng));
            }
        }
        // Timer ticks while busy; vmstat and writeback work now and then.
        let mut tick = 0.0;
        while tick < duration_us {
            kernel_lane.wait_until(tick);
            model
                .kernel
                .run(&mut kernel_lane, &mut rng, KPath::TimerTick);
            if rng.chance(0.02) {
                model
                    .kernel
                    .run(&mut kernel_lane, &mut rng, KPath::Workqueue);
            }
            tick += rng.lognormal(4_000.0, 0.2)
                + if rng.chance(0.5) {
                    rng.exp(40_000.0)
                } else {
                    0.0
                };
        }
        let mut lanes = vec![kernel_lane];
        lanes.extend(servings.into_iter().map(|s| s.lane));
        merge(lanes)
    }
}

/// One worker's view while serving a run.
struct Serving<'a> {
    model: &'a Model,
    worker: &'a Worker,
    lane: Lane,
    /// Connection slots in use, handed out lowest first.
    next_connection: usize,
    log_bytes: usize,
}

impl Serving<'_> {
    fn request(
        &mut self,
        rng: &mut Rng,
        file: Option<usize>,
        page: &SitePage,
        new_connection: bool,
    ) {
        let m = self.model;
        let w = self.worker;
        let lane = &mut self.lane;
        m.kernel.run(lane, rng, KPath::NetRx);
        m.kernel.run(lane, rng, KPath::Syscall(232)); // epoll_wait returns
        lane.write(w.stack.at(w.stack.len() - 1));
        lane.write(w.stack.at(w.stack.len() - 2));
        if new_connection {
            m.kernel.run(lane, rng, KPath::Syscall(288)); // accept4
            let slot = self.next_connection % w.connections.len().max(1);
            self.next_connection += 1;
            lane.write(w.connections.at(slot));
            m.libssl.run(lane, rng, 1, 12, 6.0); // handshake
            let session = rng.index(m.ssl_sessions.len());
            lane.write(m.ssl_sessions.at(session));
        }
        // Request buffers come from a LIFO free list: a few stay hot.
        let buffer = rng.below(3).min(rng.below(8)) as usize;
        lane.write(w.buffers.at(buffer % w.buffers.len()));
        m.libssl.run(lane, rng, 2, 4, 2.0); // decrypt
        m.nginx.code.run(lane, rng, 10, 6, 3.0); // parse the request line and headers
        m.nginx.code.run(lane, rng, 11, 4, 2.0); // find the location
        lane.read(m.nginx.data.at(rng.index(m.nginx.data.len().min(8))));
        match file {
            Some(f) => self.static_file(rng, f),
            None => self.dynamic(rng, page),
        }
        // Access log line into the worker's buffer, flushed to the file.
        let m = self.model;
        let lane = &mut self.lane;
        m.nginx.code.run(lane, rng, 12, 2, 2.0);
        m.libc.run(lane, rng, 3, 2, 1.0);
        let log_page = (self.log_bytes / 4096) % self.worker.log_buffer.len();
        lane.write(self.worker.log_buffer.at(log_page));
        self.log_bytes += rng.range(150, 260) as usize;
    }

    fn static_file(&mut self, rng: &mut Rng, f: usize) {
        let m = self.model;
        let lane = &mut self.lane;
        m.kernel.run(lane, rng, KPath::Vfs);
        lane.read(m.kernel.object(f as u64)); // dentry and inode
        lane.read(m.kernel.object(f as u64 + (1 << 32)));
        let pages = &m.files[f].pages.frames;
        let text = pages.len() < 40 && f < m.site.len() + m.common_assets.len();
        if text && rng.chance(0.3) {
            // gzip on the fly: deflate state and window, then the output.
            m.libz.run(lane, rng, 4, 6, 4.0);
            let state = &self.worker.gzip_state;
            for i in 0..state.len().min(pages.len() * 4 + 8) {
                lane.write(state.at(i));
            }
        }
        m.kernel.run(lane, rng, KPath::Syscall(40)); // sendfile
        for &page in pages {
            lane.read(page);
            lane.work(rng.lognormal(1.5, 0.4));
        }
        m.kernel.run(lane, rng, KPath::NetTx);
    }

    fn dynamic(&mut self, rng: &mut Rng, page: &SitePage) {
        let m = self.model;
        let lane = &mut self.lane;
        m.nginx.code.run(lane, rng, 13, 5, 3.0); // proxy cache lookup
        let zone = &m.cache_zone;
        // Entries of the dynamic pages first, LRU slots for fills after.
        let key = page.html * 3;
        let entry = rng.range(1, 3) as usize;
        if key + entry < zone.len() * 2 / 3 && rng.chance(0.85) {
            for i in 0..entry {
                lane.read(zone.at(key + i));
                lane.work(rng.lognormal(2.0, 0.3));
            }
        } else {
            // Miss: ask the upstream, wait for it, store the answer.
            m.kernel.run(lane, rng, KPath::NetTx);
            lane.wait(rng.lognormal(4000.0, 0.6));
            m.kernel.run(lane, rng, KPath::NetRx);
            let slot = zone.len() * 2 / 3 + rng.index(zone.len() / 3);
            for i in 0..entry {
                lane.write(zone.at((slot + i) % zone.len()));
                lane.work(rng.lognormal(3.0, 0.3));
            }
        }
        m.libssl.run(lane, rng, 5, 3, 2.0);
        m.kernel.run(lane, rng, KPath::NetTx);
    }
}
