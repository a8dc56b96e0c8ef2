"""Unit tests for the SD image's tools that run on any Debian host in seconds:
ext4-delta (writes a sandbox's changes into an ext4 image with debugfs) and picamd-setup's
parser (--check). The whole image is tested by image-build/image-e2e under QEMU.

    python3 -m unittest discover -s image-build/tests -v      (as root: ownership)
"""

import os
import shutil
import stat
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
DELTA = os.path.join(HERE, "..", "ext4-delta")
SETUP = os.path.join(HERE, "..", "rootfs", "usr", "lib", "picamd-image", "picamd-setup")
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def debugfs(image, cmd):
    return subprocess.run(["debugfs", "-R", cmd, image], capture_output=True, text=True).stdout


def inode_mode(image, path):
    out = debugfs(image, f"stat {path}")
    line = next(l for l in out.splitlines() if "Mode:" in l)
    return int(line.split("Mode:")[1].split()[0], 8)


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("debugfs"), "needs root and e2fsprogs")
class Ext4DeltaTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ext4-delta-test-")
        self.addCleanup(shutil.rmtree, self.dir)
        src = os.path.join(self.dir, "src")
        os.makedirs(f"{src}/usr/bin")
        os.makedirs(f"{src}/etc")
        # What rdump loses: a set-user-ID binary, a file capability, a hard link.
        shutil.copy("/bin/true", f"{src}/usr/bin/suid")
        os.chmod(f"{src}/usr/bin/suid", 0o4755)
        shutil.copy("/bin/true", f"{src}/usr/bin/capped")
        os.setxattr(f"{src}/usr/bin/capped", "security.capability", CAP_NET_RAW)
        with open(f"{src}/etc/old", "w") as f:
            f.write("old\n")
        os.link(f"{src}/etc/old", f"{src}/etc/old-link")
        with open(f"{src}/etc/gone", "w") as f:
            f.write("to be removed\n")
        self.image = os.path.join(self.dir, "fs.img")
        run("mke2fs", "-q", "-t", "ext4", "-d", src, self.image, "32M")
        self.tree = os.path.join(self.dir, "tree")
        os.mkdir(self.tree)
        run("debugfs", "-R", f"rdump / {self.tree}", self.image)
        self.manifest = os.path.join(self.dir, "before.pkl")
        run(DELTA, "scan", self.tree, self.manifest)

    def apply(self, *extra):
        return run(DELTA, "apply", "--tree", self.tree, "--before", self.manifest,
                   "--image", self.image, *extra)

    def test_rdump_is_lossy_which_is_why_the_delta_exists(self):
        self.assertEqual(os.stat(f"{self.tree}/usr/bin/suid").st_mode & 0o4000, 0)
        self.assertEqual(os.listxattr(f"{self.tree}/usr/bin/capped"), [])

    def test_untouched_files_keep_what_rdump_lost(self):
        with open(f"{self.tree}/etc/new", "w") as f:
            f.write("new\n")
        self.apply()
        self.assertEqual(inode_mode(self.image, "/usr/bin/suid"), 0o4755)
        self.assertIn("security.capability", debugfs(self.image, "ea_list /usr/bin/capped"))
        self.assertIn("Links: 2", debugfs(self.image, "stat /etc/old"))  # still one inode

    def test_new_replaced_and_removed_entries_are_carried(self):
        t = self.tree
        os.makedirs(f"{t}/opt/app/sub")
        with open(f"{t}/opt/app/sub/data", "w") as f:
            f.write("payload\n")
        os.chown(f"{t}/opt/app/sub/data", 123, 456)
        shutil.copy("/bin/true", f"{t}/opt/app/tool")
        os.chmod(f"{t}/opt/app/tool", 0o4750)
        os.setxattr(f"{t}/opt/app/tool", "security.capability", CAP_NET_RAW)
        os.symlink("sub/data", f"{t}/opt/app/link")
        # Replaced the way dpkg does it: a new file renamed over the old one.
        with open(f"{t}/etc/old.new", "w") as f:
            f.write("replaced\n")
        os.rename(f"{t}/etc/old.new", f"{t}/etc/old")
        os.unlink(f"{t}/etc/gone")
        self.apply()
        self.assertEqual(debugfs(self.image, "cat /opt/app/sub/data"), "payload\n")
        st = debugfs(self.image, "stat /opt/app/sub/data")
        self.assertIn("User:   123", st)
        self.assertIn("Group:   456", st)
        self.assertEqual(inode_mode(self.image, "/opt/app/tool"), 0o4750)
        self.assertIn("security.capability", debugfs(self.image, "ea_list /opt/app/tool"))
        self.assertIn("Fast link dest: \"sub/data\"", debugfs(self.image, "stat /opt/app/link"))
        self.assertEqual(debugfs(self.image, "cat /etc/old"), "replaced\n")
        self.assertEqual(debugfs(self.image, "cat /etc/old-link"), "old\n")
        self.assertNotIn("gone", debugfs(self.image, "ls /etc"))
        run("e2fsck", "-fn", self.image)

    def test_grow_makes_room(self):
        with open(f"{self.tree}/big", "wb") as f:
            f.write(os.urandom(48 << 20))  # more than the 32 MiB image
        self.apply("--grow")
        self.assertGreater(os.path.getsize(self.image), 80 << 20)
        self.assertIn("Size: 50331648", debugfs(self.image, "stat /big"))

    def test_unchanged_tree_writes_nothing(self):
        out = run(DELTA, "apply", "--tree", self.tree, "--before", self.manifest,
                  "--image", self.image, "--dry-run")
        self.assertEqual(out.stdout.strip(), "")

    def test_a_quote_in_a_path_is_refused(self):
        open(f"{self.tree}/etc/bad\"name", "w").close()
        r = subprocess.run([DELTA, "apply", "--tree", self.tree, "--before", self.manifest,
                            "--image", self.image], capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("quote", r.stderr)


class SetupCheckTest(unittest.TestCase):
    def check(self, text, raw=False):
        with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
            f.write(text if raw else text.encode())
        self.addCleanup(os.unlink, f.name)
        return subprocess.run(["bash", SETUP, "--check", f.name], capture_output=True, text=True)

    def test_full_settings_are_accepted_and_secrets_masked(self):
        r = self.check(
            "hostname = Cam-2\nuser = alice\npassword = \"a b #c\"\n"
            "ssh_authorized_key = ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx alice@pc\n"
            "wifi_country = nl\nwifi_ssid = 'Home Net'\nwifi_password = 12345678\n"
            "timezone = Europe/Amsterdam\n")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("hostname = cam-2", r.stdout)
        self.assertIn("password = (set, 6 characters)", r.stdout)
        self.assertIn("wifi_password = (set, 8 characters)", r.stdout)
        self.assertIn("wifi_ssid = Home Net", r.stdout)
        self.assertIn("wifi_country = NL", r.stdout)
        self.assertIn("ssh = yes", r.stdout)  # on because a key was given
        self.assertIn("ssh_password_login = no", r.stdout)
        self.assertNotIn("a b #c", r.stdout)
        self.assertNotIn("12345678", r.stdout)

    def test_camera_login(self):
        r = self.check("camera_user = viewer\ncamera_password = long enough #1\n")
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("camera_user = viewer", r.stdout)
        self.assertIn("camera_password = (set, 14 characters)", r.stdout)
        for text, message in {
            "camera_user = viewer\n": "camera_user needs a camera_password",
            "camera_password = long enough\n": "needs a camera_user",
            "camera_user = a:b\ncamera_password = long enough\n": "line 1: camera_user",
            "camera_user = v\ncamera_password = short\n": "line 2: camera_password must be 8",
            "camera_user = v\ncamera_password_hash = $6$x$y\n": "line 2: camera_password_hash must be an argon2id",
        }.items():
            r = self.check(text)
            self.assertEqual(r.returncode, 1, text)
            self.assertIn(message, r.stdout, text)

    def test_windows_line_ends_and_bom(self):
        r = self.check(b"\xef\xbb\xbfhostname = camera\r\nuser = bob\r\npassword_hash = $6$salt$abc/DEF.12\r\n", raw=True)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("hostname = camera", r.stdout)
        self.assertIn("ssh = no", r.stdout)

    def test_the_template_sets_nothing(self):
        with open(os.path.join(HERE, "..", "bootfs", "picamd-setup.txt"), "rb") as f:
            r = self.check(f.read(), raw=True)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("(no settings)", r.stdout)

    def test_every_mistake_is_reported_with_its_line(self):
        r = self.check("hostname = -x\nuser = root\nfoo = 1\nwifi_ssid = net\nwifi_password = short\n"
                       "ssh = maybe\npassword_hash = plain\nno equals sign\ntimezone = ../../etc\n")
        self.assertEqual(r.returncode, 1)
        for expected in ["line 1: hostname", "line 2: user", 'line 3: unknown key "foo"',
                         "line 5: wifi_password", "line 6: ssh must be yes or no",
                         "line 7: password_hash", "line 8: expected key = value",
                         "line 9: timezone", "wifi_ssid needs wifi_country"]:
            self.assertIn(expected, r.stdout)

    def test_combinations(self):
        cases = {
            "user = a\n": "needs a password",
            "password = x\n": "needs a user",
            "user = a\npassword = x\npassword_hash = $6$a$b\n": "set one, not both",
            "user = a\npassword = x\nuser = b\n": "user is set twice",
            "user = a\nssh_authorized_key = ssh-ed25519 AAAA\nssh_password_login = yes\n": "needs a password",
            "wifi_password = 12345678\n": "need a wifi_ssid",
        }
        for text, message in cases.items():
            r = self.check(text)
            self.assertEqual(r.returncode, 1, text)
            self.assertIn(message, r.stdout, text)


if __name__ == "__main__":
    unittest.main()
