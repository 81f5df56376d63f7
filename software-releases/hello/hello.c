/*
 * hello: a tiny HTTP/1.0 server that answers with a greeting.
 *
 *   usage: hello IP PORT GREETING_FILE
 *
 *   GET /        200, the greeting followed by a newline
 *   GET /health  200, "ok"
 *   other paths  404
 *   not GET      405 (HEAD gets the same answer without its body)
 *
 * One process, one connection at a time, no threads. Every connection gets a
 * bounded request head (8 KiB) and a bounded time (5 s to send it, 5 s to read
 * the answer), so a slow or silent client cannot hold the server. The greeting
 * is read once at start (at most 4 KiB, trailing newlines removed). SIGTERM and
 * SIGINT stop it cleanly once the connection in hand is answered; SIGPIPE is
 * ignored. One line per request is written to stdout.
 *
 * Only POSIX interfaces are used: it builds with any C99 compiler.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define GREETING_MAX 4096
#define HEAD_MAX 8192
#define HEAD_TIMEOUT_MS 5000
#define SEND_TIMEOUT_MS 5000
#define DRAIN_TIMEOUT_MS 500
#define LOG_TARGET_MAX 200

static volatile sig_atomic_t stop_signal = 0;

static void on_stop(int sig)
{
    stop_signal = sig;
}

static void die(const char *format, ...)
{
    va_list args;
    fputs("hello: ", stderr);
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
    exit(1);
}

/* Milliseconds on a clock that never goes back. */
static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for `events` or the deadline passes: 1 ready, 0 timeout, -1 error. */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = { .fd = fd, .events = events, .revents = 0 };
        int n = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (n > 0)
            return 1;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

/* Sends the whole buffer before the deadline; returns 0 on success, -1 otherwise. */
static int send_all(int fd, const char *data, size_t length, long long deadline)
{
    while (length > 0) {
        ssize_t n = send(fd, data, length, 0);
        if (n > 0) {
            data += n;
            length -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline) != 1)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* Reads the file whole; fails if it is missing or larger than GREETING_MAX. */
static size_t read_greeting(const char *file, char *greeting)
{
    int fd = open(file, O_RDONLY);
    if (fd < 0)
        die("cannot open the greeting file %s: %s", file, strerror(errno));
    size_t length = 0;
    for (;;) {
        char extra;
        ssize_t n = length < GREETING_MAX ? read(fd, greeting + length, GREETING_MAX - length) : read(fd, &extra, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("cannot read the greeting file %s: %s", file, strerror(errno));
        if (n == 0)
            break;
        if (length == GREETING_MAX)
            die("the greeting file %s is larger than %d bytes", file, GREETING_MAX);
        length += (size_t)n;
    }
    close(fd);
    while (length > 0 && (greeting[length - 1] == '\n' || greeting[length - 1] == '\r'))
        length--;
    return length;
}

static int parse_port(const char *text)
{
    char *end;
    errno = 0;
    long port = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || port < 1 || port > 65535)
        die("bad port \"%s\": expected a number from 1 to 65535", text);
    return (int)port;
}

static int listen_on(const char *ip, const char *port)
{
    struct addrinfo hints, *found;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    int error = getaddrinfo(ip, port, &hints, &found);
    if (error != 0)
        die("bad address %s: %s", ip, gai_strerror(error));
    int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("SO_REUSEADDR: %s", strerror(errno));
    if (bind(fd, found->ai_addr, found->ai_addrlen) < 0)
        die("cannot bind %s:%s: %s", ip, port, strerror(errno));
    freeaddrinfo(found);
    if (listen(fd, 64) < 0)
        die("listen: %s", strerror(errno));
    /* Non-blocking, so that accept never hangs on a client gone after poll saw it. */
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
        die("fcntl: %s", strerror(errno));
    return fd;
}

/* Where the head ends: just past the blank line, or 0 when it is not complete yet. */
static size_t head_end(const char *head, size_t length)
{
    for (size_t i = 0; i + 1 < length; i++) {
        if (head[i] != '\n')
            continue;
        if (head[i + 1] == '\n')
            return i + 2;
        if (head[i + 1] == '\r' && i + 2 < length && head[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* Copies text for the log: printable ASCII only, bounded. */
static void printable(char *out, size_t size, const char *text, size_t length)
{
    size_t o = 0;
    for (size_t i = 0; i < length && o + 4 < size; i++) {
        unsigned char c = (unsigned char)text[i];
        out[o++] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    if (length > 0 && o + 4 >= size) {
        out[o++] = '.';
        out[o++] = '.';
        out[o++] = '.';
    }
    out[o] = '\0';
}

static void log_request(const char *client, const char *request, int status, size_t bytes)
{
    char when[32];
    time_t t = time(NULL);
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        strcpy(when, "-");
    if (status == 0)
        printf("%s %s \"%s\" - 0\n", when, client, request);
    else
        printf("%s %s \"%s\" %d %zu\n", when, client, request, status, bytes);
    fflush(stdout);
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    default: return "Internal Server Error";
    }
}

/*
 * Sends a whole answer; its body is `body` followed by a newline, left out when
 * the request was a HEAD (an answer to HEAD never has a body). Returns the bytes
 * of the body sent.
 */
static size_t answer(int fd, int status, const char *body, size_t length, int head_only, long long deadline)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.0 %d %s\r\n"
                     "Content-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "Connection: close\r\n"
                     "\r\n",
                     status, reason(status), length + 1, status == 405 ? "Allow: GET\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof head)
        return 0;
    if (send_all(fd, head, (size_t)n, deadline) < 0)
        return 0;
    if (head_only)
        return 0;
    if (send_all(fd, body, length, deadline) < 0 || send_all(fd, "\n", 1, deadline) < 0)
        return 0;
    return length + 1;
}

static size_t error_answer(int fd, int status, int head_only, long long deadline)
{
    const char *body = status == 404 ? "not found"
                     : status == 405 ? "method not allowed"
                     : status == 408 ? "request timeout"
                     : status == 431 ? "request head too large"
                     : "bad request";
    return answer(fd, status, body, strlen(body), head_only, deadline);
}

/* Reads one request head and answers it. */
static void serve(int fd, const char *client, const char *greeting, size_t greeting_length)
{
    char head[HEAD_MAX];
    size_t length = 0, end = 0;
    long long deadline = now_ms() + HEAD_TIMEOUT_MS;
    int status = 0;

    while (end == 0) {
        if (length == sizeof head) {
            status = 431;
            break;
        }
        ssize_t n = recv(fd, head + length, sizeof head - length, 0);
        if (n > 0) {
            length += (size_t)n;
            end = head_end(head, length);
        } else if (n == 0) {
            /* The client left before finishing its request: nobody to answer. */
            char request[LOG_TARGET_MAX + 4];
            printable(request, sizeof request, head, length);
            log_request(client, request, 0, 0);
            return;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int ready = wait_fd(fd, POLLIN, deadline);
            if (ready == 0) {
                status = 408;
                break;
            }
            if (ready < 0)
                return;
        } else {
            return;
        }
    }

    /* The request line: METHOD SP TARGET SP HTTP/x.y */
    size_t line = 0;
    while (line < length && head[line] != '\r' && head[line] != '\n')
        line++;
    char request[LOG_TARGET_MAX + 4];
    printable(request, sizeof request, head, line);

    const char *body = NULL;
    size_t body_length = 0;
    int head_only = 0;
    if (status == 0) {
        const char *method = head, *target = memchr(head, ' ', line);
        const char *version = target ? memchr(target + 1, ' ', line - (size_t)(target + 1 - head)) : NULL;
        if (target == NULL || version == NULL || target == method || version == target + 1 ||
            (size_t)(head + line - (version + 1)) < 5 || memcmp(version + 1, "HTTP/", 5) != 0) {
            status = 400;
        } else {
            size_t method_length = (size_t)(target - method);
            target++;
            size_t path_length = (size_t)(version - target);
            const char *query = memchr(target, '?', path_length);
            if (query)
                path_length = (size_t)(query - target);
            if (method_length != 3 || memcmp(method, "GET", 3) != 0) {
                status = 405;
                head_only = method_length == 4 && memcmp(method, "HEAD", 4) == 0;
            } else if (path_length == 1 && target[0] == '/') {
                status = 200;
                body = greeting;
                body_length = greeting_length;
            } else if (path_length == 7 && memcmp(target, "/health", 7) == 0) {
                status = 200;
                body = "ok";
                body_length = 2;
            } else {
                status = 404;
            }
        }
    }

    long long send_deadline = now_ms() + SEND_TIMEOUT_MS;
    size_t sent = body ? answer(fd, status, body, body_length, head_only, send_deadline)
                       : error_answer(fd, status, head_only, send_deadline);
    log_request(client, request, status, sent);

    /*
     * Close gently: say we are done, then read what the client may still send
     * (a request body we did not want) so that closing does not reset the
     * connection before the client has read the answer.
     */
    shutdown(fd, SHUT_WR);
    long long drain_deadline = now_ms() + DRAIN_TIMEOUT_MS;
    size_t drained = 0;
    while (drained < 65536 && wait_fd(fd, POLLIN, drain_deadline) == 1) {
        char sink[4096];
        ssize_t n = recv(fd, sink, sizeof sink, 0);
        if (n <= 0 && !(n < 0 && errno == EINTR))
            break;
        if (n > 0)
            drained += (size_t)n;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: hello IP PORT GREETING_FILE\n");
        return 2;
    }
    parse_port(argv[2]);

    static char greeting[GREETING_MAX];
    size_t greeting_length = read_greeting(argv[3], greeting);

    struct sigaction ignore, stop;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPIPE, &ignore, NULL);
    memset(&stop, 0, sizeof stop);
    stop.sa_handler = on_stop;
    sigemptyset(&stop.sa_mask);
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);

    /*
     * The stop signals stay blocked except while waiting in pselect, which unblocks
     * them atomically: a signal is never lost between the check and the wait, and a
     * request in hand is always answered before the server exits.
     */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    if (sigprocmask(SIG_BLOCK, &blocked, &waiting) < 0)
        die("sigprocmask: %s", strerror(errno));
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);

    int listener = listen_on(argv[1], argv[2]);
    printf("hello: listening on %s port %s\n", argv[1], argv[2]);
    fflush(stdout);

    while (!stop_signal) {
        fd_set readable;
        FD_ZERO(&readable);
        FD_SET(listener, &readable);
        int n = pselect(listener + 1, &readable, NULL, NULL, NULL, &waiting);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("pselect: %s", strerror(errno));
        }

        struct sockaddr_storage address;
        socklen_t address_length = sizeof address;
        int fd = accept(listener, (struct sockaddr *)&address, &address_length);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                fprintf(stderr, "hello: accept: %s\n", strerror(errno));
                struct timespec pause = { 0, 100 * 1000 * 1000 };
                nanosleep(&pause, NULL);
            }
            continue;
        }
        /* Whether an accepted socket inherits O_NONBLOCK differs between systems: set it. */
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
            close(fd);
            continue;
        }
        char host[64], port[16], client[96];
        if (getnameinfo((struct sockaddr *)&address, address_length, host, sizeof host, port, sizeof port,
                        NI_NUMERICHOST | NI_NUMERICSERV) == 0)
            snprintf(client, sizeof client, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
        else
            strcpy(client, "-");
        serve(fd, client, greeting, greeting_length);
        close(fd);
    }

    close(listener);
    printf("hello: stopping on %s\n", stop_signal == SIGTERM ? "SIGTERM" : "SIGINT");
    fflush(stdout);
    return 0;
}
