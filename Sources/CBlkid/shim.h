#pragma once
// Thin wrappers for what Swift cannot import directly (variadic functions, macros).
#include <blkid/blkid.h>
