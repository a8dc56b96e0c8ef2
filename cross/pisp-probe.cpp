// Test helper for cross/smoke (trixie flavour): constructs libpisp's Back End the way
// libcamera's rpi/pisp pipeline handler does (BackEnd::Config({}): no defaults file given),
// which makes libpisp load its backend_default_config.json. Prints the outcome; exit 0 when
// the config loaded. Linked like picamd (DT_RPATH to the bundle), so the bundled libpisp runs.
#include <cstdio>
#include <exception>

#include <backend/backend.hpp>
#include <variants/variant.hpp>

int main()
{
	try {
		libpisp::BackEnd be(libpisp::BackEnd::Config({}), libpisp::BCM2712_D0);
		std::puts("libpisp BackEnd: default config loaded");
		return 0;
	} catch (const std::exception &e) {
		std::printf("libpisp BackEnd: %s\n", e.what());
		return 1;
	}
}
