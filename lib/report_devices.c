/* Which system a run ran on, the peak it is measured against, and what to call its model.
 *
 * Peaks are NVIDIA's dense BF16 tensor-core figures per GPU (the datasheets print them "with
 * sparsity", twice these). Sources, read 2026:
 *   H100 SXM 989.4, H200 / GH200 the same Hopper tensor cores: NVIDIA H100 datasheet (BF16
 *     1,979 TFLOPS with sparsity), tabulated at glennklockwood.com/garden/processors/h100
 *     (BF16 matrix 989.4, sparse 1978.9); H200 SXM BF16 1,979 TFLOPS sparse in NVIDIA's H200
 *     datasheet (as quoted at hpc-ai.com/blog/B200-Practical-Considerations-for-AI-Teams).
 *   H100 PCIe 756.5: NVIDIA H100 datasheet, BF16 1,513 TFLOPS with sparsity (as reproduced at
 *     archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html).
 *   B200 (HGX, 1000 W) 2250 and GB200 (1200 W) 2500: NVIDIA Blackwell architecture technical
 *     brief, tabulated at glennklockwood.com/garden/processors/B200; HGX B200 BF16 4,500
 *     TFLOPS sparse at hpc-ai.com (above).
 *   GB300 2500 and B300 2250: per-GPU dense table at verda.com/blog/gb300-nvl72-architecture
 *     (GB300 NVL72: 360 PFLOPS FP16/BF16 with sparsity for 72 GPUs).
 *   A100 312: NVIDIA A100 datasheet (BF16 312 TFLOPS, 624 with sparsity).
 * Unknown devices (and H100/H200 NVL, whose figures we have not confirmed) get no peak: MFU is
 * then left out unless --peak gives one. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "report.h"

/* Order matters: the first entry whose `match` occurs in the device name wins, so the longer
 * names ("GB200", "H100 PCIe", "GH200") come before the names they contain. */
static const wan_report_device devices[] = {
    {"GB300", "DGX-GB300", 2500.0, "NVIDIA GB300 NVL72 (verda.com GB300 architecture post)"},
    {"GB200", "DGX-GB200", 2500.0, "NVIDIA Blackwell technical brief (GB200, 1200 W)"},
    {"B300", "DGX-B300", 2250.0, "NVIDIA HGX B300 (verda.com GB300 architecture post)"},
    {"B200", "DGX-B200", 2250.0, "NVIDIA Blackwell technical brief (HGX B200, 1000 W)"},
    {"GH200", "GH200", 989.4, "NVIDIA GH200 (Hopper tensor cores as H100 SXM)"},
    {"H200 NVL", "H200-NVL", 0, "not known: pass --peak"},
    {"H200", "DGX-H200", 989.4, "NVIDIA H200 datasheet (1,979 TFLOPS with sparsity)"},
    {"H100 PCIe", "H100-PCIe", 756.5, "NVIDIA H100 datasheet (PCIe: 1,513 TFLOPS with sparsity)"},
    {"H100 NVL", "H100-NVL", 0, "not known: pass --peak"},
    {"H100", "DGX-H100", 989.4, "NVIDIA H100 datasheet (SXM: 1,979 TFLOPS with sparsity)"},
    {"A100", "DGX-A100", 312.0, "NVIDIA A100 datasheet (624 TFLOPS with sparsity)"},
};

static bool contains_nocase(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (!strncasecmp(hay, needle, n)) return true;
    return false;
}

const wan_report_device *wan_report_device_lookup(const char *device) {
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++)
        if (contains_nocase(device, devices[i].match)) return &devices[i];
    return NULL;
}

void wan_report_system_name(const char *device, char *buf, size_t n) {
    const wan_report_device *d = wan_report_device_lookup(device);
    if (d) snprintf(buf, n, "%s", d->system);
    else if (!strncasecmp(device, "CPU", 3)) snprintf(buf, n, "CPU");
    else snprintf(buf, n, "%s", device);
}

void wan_report_model_name(const wan_model_cfg *m, char *buf, size_t n) {
    if (m->dim == 5120 && m->num_layers == 40) snprintf(buf, n, "Wan 2.1 14B");
    else if (m->dim == 1536 && m->num_layers == 30) snprintf(buf, n, "Wan 2.1 1.3B");
    else snprintf(buf, n, "Wan DiT (dim %d, %d layers)", m->dim, m->num_layers);
}
