#pragma once
// Thin wrappers for what Swift cannot import directly (variadic functions, macros).
#include <stddef.h>
#include <newt.h>

// newtWinMessage/newtWinChoice are printf-style variadic functions, which Swift cannot
// call: these pass the text through "%s" so it is never read as a format string.
static inline void martlet_newtWinMessage(const char *title, const char *button, const char *text) {
    newtWinMessage((char *)title, (char *)button, "%s", text);
}

static inline int martlet_newtWinChoice(const char *title, const char *yes, const char *no, const char *text) {
    return newtWinChoice((char *)title, (char *)yes, (char *)no, "%s", text);
}

static inline int martlet_newtWinTernary(const char *title, const char *b1, const char *b2, const char *b3,
                                         const char *text) {
    return newtWinTernary((char *)title, (char *)b1, (char *)b2, (char *)b3, "%s", text);
}

// NEWT_KEY_ESCAPE is a character-literal macro Swift does not import.
static const int martlet_NEWT_KEY_ESCAPE = NEWT_KEY_ESCAPE;
static const int martlet_NEWT_KEY_F12 = NEWT_KEY_F12;
static const int martlet_NEWT_KEY_ENTER = NEWT_KEY_ENTER;

// newtExitStruct's reason is an anonymous enum inside the struct: hand back the exiting
// component, or NULL with the hot key in *key (0 when the form ended otherwise).
static inline newtComponent martlet_newtFormRun(newtComponent form, int *key) {
    struct newtExitStruct es;
    newtFormRun(form, &es);
    *key = 0;
    if (es.reason == NEWT_EXIT_HOTKEY) {
        *key = es.u.key;
        return NULL;
    }
    return es.reason == NEWT_EXIT_COMPONENT ? es.u.co : NULL;
}
