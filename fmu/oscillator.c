/* A damped oscillator as an FMI 2.0 co-simulation FMU: m x'' = -k x - c x' + u.
 *
 * Value references: 0 x [m], 1 v [m/s], 2 u [N] (input), 3 k [N/m], 4 c [N.s/m], 5 m [kg] (parameters).
 * doStep integrates with RK4 on sub-steps of at most 5 ms. Initialization fails (fmi2Error) when m <= 0
 * or k < 0, so a bad parameter is caught where a real FMU would catch it. Built by fmu/oscillator.py.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fmi2Functions.h"

#define NVARS 6
enum { X, V, U, K, C, M };
static const double START[NVARS] = {1.0, 0.0, 0.0, 4.0, 0.4, 1.0};

typedef struct {
    double r[NVARS];
    double time;
    const fmi2CallbackFunctions *cb;
    char *name;
} Osc;

static void accel(const double *r, double x, double v, double *dx, double *dv) {
    *dx = v;
    *dv = (-r[K] * x - r[C] * v + r[U]) / r[M];
}

const char *fmi2GetTypesPlatform(void) { return fmi2TypesPlatform; }
const char *fmi2GetVersion(void) { return fmi2Version; }
fmi2Status fmi2SetDebugLogging(fmi2Component c, fmi2Boolean on, size_t n, const fmi2String cat[]) { return fmi2OK; }

fmi2Component fmi2Instantiate(fmi2String name, fmi2Type type, fmi2String guid, fmi2String res,
                              const fmi2CallbackFunctions *cb, fmi2Boolean visible, fmi2Boolean logging) {
    if (type != fmi2CoSimulation) return NULL;
    Osc *o = (Osc *)calloc(1, sizeof(Osc));
    if (!o) return NULL;
    memcpy(o->r, START, sizeof(START));
    o->cb = cb;
    o->name = strdup(name ? name : "");
    return o;
}

void fmi2FreeInstance(fmi2Component c) {
    Osc *o = (Osc *)c;
    if (!o) return;
    free(o->name);
    free(o);
}

fmi2Status fmi2SetupExperiment(fmi2Component c, fmi2Boolean tolDef, fmi2Real tol, fmi2Real start,
                               fmi2Boolean stopDef, fmi2Real stop) {
    ((Osc *)c)->time = start;
    return fmi2OK;
}
fmi2Status fmi2EnterInitializationMode(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2ExitInitializationMode(fmi2Component c) {
    Osc *o = (Osc *)c;
    if (!(o->r[M] > 0) || !(o->r[K] >= 0)) {
        if (o->cb && o->cb->logger)
            o->cb->logger(o->cb->componentEnvironment, o->name, fmi2Error, "error", "m must be > 0 and k >= 0");
        return fmi2Error;
    }
    return fmi2OK;
}
fmi2Status fmi2Terminate(fmi2Component c) { return fmi2OK; }
fmi2Status fmi2Reset(fmi2Component c) {
    Osc *o = (Osc *)c;
    memcpy(o->r, START, sizeof(START));
    o->time = 0;
    return fmi2OK;
}

fmi2Status fmi2GetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Real value[]) {
    Osc *o = (Osc *)c;
    for (size_t i = 0; i < n; i++) {
        if (vr[i] >= NVARS) return fmi2Error;
        value[i] = o->r[vr[i]];
    }
    return fmi2OK;
}
fmi2Status fmi2SetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Real value[]) {
    Osc *o = (Osc *)c;
    for (size_t i = 0; i < n; i++) {
        if (vr[i] >= NVARS) return fmi2Error;
        o->r[vr[i]] = value[i];
    }
    return fmi2OK;
}
fmi2Status fmi2GetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Integer v[]) { return fmi2Error; }
fmi2Status fmi2GetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Boolean v[]) { return fmi2Error; }
fmi2Status fmi2GetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2String v[]) { return fmi2Error; }
fmi2Status fmi2SetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Integer v[]) { return fmi2Error; }
fmi2Status fmi2SetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Boolean v[]) { return fmi2Error; }
fmi2Status fmi2SetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2String v[]) { return fmi2Error; }

fmi2Status fmi2GetFMUstate(fmi2Component c, fmi2FMUstate *s) { return fmi2Error; }
fmi2Status fmi2SetFMUstate(fmi2Component c, fmi2FMUstate s) { return fmi2Error; }
fmi2Status fmi2FreeFMUstate(fmi2Component c, fmi2FMUstate *s) { return fmi2Error; }
fmi2Status fmi2SerializedFMUstateSize(fmi2Component c, fmi2FMUstate s, size_t *n) { return fmi2Error; }
fmi2Status fmi2SerializeFMUstate(fmi2Component c, fmi2FMUstate s, fmi2Byte b[], size_t n) { return fmi2Error; }
fmi2Status fmi2DeSerializeFMUstate(fmi2Component c, const fmi2Byte b[], size_t n, fmi2FMUstate *s) { return fmi2Error; }
fmi2Status fmi2GetDirectionalDerivative(fmi2Component c, const fmi2ValueReference u[], size_t nu,
                                        const fmi2ValueReference z[], size_t nz, const fmi2Real dv[], fmi2Real dz[]) {
    return fmi2Error;
}

fmi2Status fmi2SetRealInputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n,
                                       const fmi2Integer order[], const fmi2Real value[]) { return fmi2Error; }
fmi2Status fmi2GetRealOutputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n,
                                        const fmi2Integer order[], fmi2Real value[]) { return fmi2Error; }

fmi2Status fmi2DoStep(fmi2Component c, fmi2Real t, fmi2Real h, fmi2Boolean noSetPrior) {
    Osc *o = (Osc *)c;
    int steps = (int)ceil(h / 0.005);
    if (steps < 1) steps = 1;
    double dt = h / steps, x = o->r[X], v = o->r[V];
    for (int i = 0; i < steps; i++) {
        double k1x, k1v, k2x, k2v, k3x, k3v, k4x, k4v;
        accel(o->r, x, v, &k1x, &k1v);
        accel(o->r, x + 0.5 * dt * k1x, v + 0.5 * dt * k1v, &k2x, &k2v);
        accel(o->r, x + 0.5 * dt * k2x, v + 0.5 * dt * k2v, &k3x, &k3v);
        accel(o->r, x + dt * k3x, v + dt * k3v, &k4x, &k4v);
        x += dt / 6.0 * (k1x + 2 * k2x + 2 * k3x + k4x);
        v += dt / 6.0 * (k1v + 2 * k2v + 2 * k3v + k4v);
    }
    o->r[X] = x;
    o->r[V] = v;
    o->time = t + h;
    return fmi2OK;
}
fmi2Status fmi2CancelStep(fmi2Component c) { return fmi2Error; }
fmi2Status fmi2GetStatus(fmi2Component c, const fmi2StatusKind s, fmi2Status *value) { return fmi2Discard; }
fmi2Status fmi2GetRealStatus(fmi2Component c, const fmi2StatusKind s, fmi2Real *value) {
    if (s != fmi2LastSuccessfulTime) return fmi2Discard;
    *value = ((Osc *)c)->time;
    return fmi2OK;
}
fmi2Status fmi2GetIntegerStatus(fmi2Component c, const fmi2StatusKind s, fmi2Integer *value) { return fmi2Discard; }
fmi2Status fmi2GetBooleanStatus(fmi2Component c, const fmi2StatusKind s, fmi2Boolean *value) { return fmi2Discard; }
fmi2Status fmi2GetStringStatus(fmi2Component c, const fmi2StatusKind s, fmi2String *value) { return fmi2Discard; }
