//! The `-P` progress bar: the server's size estimate as the total, bytes/s and ETA. Drawn only
//! when stderr is a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bar(ProgressBar);

impl Bar {
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        Bar(bar)
    }
}

impl pgrepl::backup::Progress for Bar {
    fn start(&self, total: Option<u64>) {
        let template = match total {
            Some(total) => {
                self.0.set_length(total);
                "{bytes}/{total_bytes} ({percent}%) {binary_bytes_per_sec} ETA {eta} {wide_bar}"
            }
            None => "{bytes} {binary_bytes_per_sec} {elapsed}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.0.set_style(style);
        }
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
