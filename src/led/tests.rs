use std::path::PathBuf;

/// A directory laid out like `/sys/class/leds`, removed on drop.
pub(super) struct FakeLeds {
    pub base: PathBuf,
}

impl FakeLeds {
    pub fn new(tag: &str) -> FakeLeds {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base =
            std::env::temp_dir().join(format!("picamd-leds-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        FakeLeds { base }
    }

    /// Adds an LED as the Pi's `ACT` looks: SD card trigger, lit.
    pub fn add(&self, name: &str, max: &str) -> PathBuf {
        let dir = self.base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trigger"), "none [mmc0] timer heartbeat\n").unwrap();
        std::fs::write(dir.join("brightness"), "255\n").unwrap();
        std::fs::write(dir.join("max_brightness"), format!("{max}\n")).unwrap();
        dir
    }

    pub fn read(&self, name: &str, attr: &str) -> String {
        std::fs::read_to_string(self.base.join(name).join(attr)).unwrap()
    }
}

impl Drop for FakeLeds {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
