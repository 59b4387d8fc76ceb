#pragma once
// Thin wrappers for what Swift cannot import directly (variadic functions, macros).
#include <archive.h>
#include <archive_entry.h>
