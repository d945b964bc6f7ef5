#include "cli.h"

#include <stdarg.h>
#include <stdio.h>

#include "error.h"
#include "log.h"

#ifndef WAN_VERSION
#define WAN_VERSION "0.0.0"
#endif
#ifndef WAN_GIT_REV
#define WAN_GIT_REV "unknown"
#endif

void wan_cli_version(const char *prog) {
#ifdef WAN_CUDA
    const char *cuda = "yes";
#else
    const char *cuda = "no (built with CUDA=0)";
#endif
    printf("%s %s (git %s; CUDA backend: %s)\n", prog, WAN_VERSION, WAN_GIT_REV, cuda);
}

int wan_cli_fail(const char *prog, int code) {
    wan_error_print(prog);
    return code ? code : WAN_ERR_RUNTIME;
}

int wan_cli_usage_error(const char *prog, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    wan_log(WAN_LOG_ERROR, "%s: %s (see %s --help)", prog, msg, prog);
    return WAN_ERR_USAGE;
}

int wan_cli_add_set(wan_cli_config *cc, const char *prog, const char *assignment) {
    if (cc->nsets == (int)(sizeof cc->sets / sizeof cc->sets[0]))
        return wan_cli_usage_error(prog, "too many --set options");
    cc->sets[cc->nsets++] = assignment;
    return 0;
}

int wan_cli_load_config(const wan_cli_config *cc, wan_config *cfg, int world_size) {
    wan_config_defaults(cfg);
    if (cc->path) WAN_TRY(wan_config_load(cfg, cc->path));
    for (int i = 0; i < cc->nsets; i++) WAN_TRY(wan_config_set(cfg, cc->sets[i]));
    return wan_config_validate(cfg, world_size);
}
