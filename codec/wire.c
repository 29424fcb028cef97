// SPDX-License-Identifier: Apache-2.0
//
// UTF-8 validation past the first non-ASCII byte, for wire.h. Pure; any thread.
#include "codec/wire.h"

bool wire_utf8_valid_from(const uint8_t *s, size_t len, size_t i)
{
    while (i < len) {
        uint8_t b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if ((b & 0xe0) == 0xc0) {
            n = 2;
            cp = b & 0x1f;
        } else if ((b & 0xf0) == 0xe0) {
            n = 3;
            cp = b & 0x0f;
        } else if ((b & 0xf8) == 0xf0) {
            n = 4;
            cp = b & 0x07;
        } else {
            return false;
        }
        if (len - i < n)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n;
    }
    return true;
}
