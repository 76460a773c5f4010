/*
 * ProcessPrng for wine 8 (Debian 12), which lacks bcryptprimitives.dll:
 * Rust's standard library takes its random bytes from it on Windows.
 * Built with mingw by scripts/windows.sh and put in the wine prefix's
 * system32; never shipped. Windows has the real DLL.
 */
#include <windows.h>
#include <bcrypt.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
