/* dbchar crop nudge (Dataset tab): move and resize the square over a picture's original. */
/* Every global here starts with "dbchar" (the webui puts every extension's JS on one page). */
/* global gradioApp, onUiLoaded */

/*
 * The Python side (lib_dbchar/ui/dataset_render.py, stage_html) renders
 *
 *   <div class="dbchar-crop-stage" data-picture data-width data-height data-x data-y data-side
 *        data-min data-target tabindex="0">
 *     <img class="dbchar-crop-image"> <div class="dbchar-crop-square"> 4 corner handles </div>
 *   </div>
 *
 * with the square in the ORIGINAL's pixels. This script makes every such stage interactive: drag
 * the square to move it, drag a corner to resize it (the opposite corner stays put), arrow keys
 * move it, shift+arrows resize it about its centre (up/right grow, down/left shrink; alt: 1 px
 * steps). The square always stays a square inside the picture. After each change the box is
 * written as JSON {"picture", "x", "y", "side"} into the textbox whose id is data-target, which
 * the "Accept" button sends to Python.
 */

/** The root to look elements up in: the webui's gradioApp() when there, else the document. */
function dbcharCropRoot() {
    return typeof gradioApp === "function" ? gradioApp() : document;
}

function dbcharCropClamp(value, low, high) {
    return Math.max(low, Math.min(high, value));
}

/**
 * A box made valid: a whole-pixel square of at least minSide (or the picture's short side, if
 * smaller) that lies inside the width x height picture, as near the given one as possible.
 */
function dbcharCropFit(box, width, height, minSide) {
    var short = Math.min(width, height);
    var side = Math.round(dbcharCropClamp(box.side, Math.min(minSide, short), short));
    return {
        x: Math.round(dbcharCropClamp(box.x, 0, width - side)),
        y: Math.round(dbcharCropClamp(box.y, 0, height - side)),
        side: side,
    };
}

/** The box moved by (dx, dy) original pixels, stopped at the edges. */
function dbcharCropMove(box, dx, dy, width, height, minSide) {
    return dbcharCropFit({x: box.x + dx, y: box.y + dy, side: box.side}, width, height, minSide);
}

/** The box grown (delta > 0) or shrunk about its centre, kept inside the picture. */
function dbcharCropResizeCentred(box, delta, width, height, minSide) {
    var short = Math.min(width, height);
    var side = dbcharCropClamp(box.side + delta, Math.min(minSide, short), short);
    var cx = box.x + box.side / 2;
    var cy = box.y + box.side / 2;
    return dbcharCropFit({x: cx - side / 2, y: cy - side / 2, side: side}, width, height, minSide);
}

/**
 * The box resized by dragging one corner ("nw", "ne", "sw", "se") by (dx, dy) from where the drag
 * started: the opposite corner stays fixed, the side follows the pointer along the axis it moved
 * most, and it never grows past the picture's edges.
 */
function dbcharCropResizeCorner(start, corner, dx, dy, width, height, minSide) {
    var east = corner.indexOf("e") >= 0;
    var south = corner.indexOf("s") >= 0;
    var anchorX = east ? start.x : start.x + start.side;
    var anchorY = south ? start.y : start.y + start.side;
    // The axis the pointer moved most along decides, so the corner follows the pointer both ways.
    var wanted = Math.abs(dx) >= Math.abs(dy) ? start.side + (east ? dx : -dx) : start.side + (south ? dy : -dy);
    var room = Math.min(east ? width - anchorX : anchorX, south ? height - anchorY : anchorY);
    var side = Math.round(dbcharCropClamp(wanted, Math.min(minSide, room), room));
    return {x: east ? anchorX : anchorX - side, y: south ? anchorY : anchorY - side, side: side};
}

/** Write the box into the target textbox and tell gradio (an "input" event, as typing would). */
function dbcharCropWrite(targetId, picture, box) {
    var root = dbcharCropRoot();
    var field = root.querySelector("#" + targetId + " textarea") || root.querySelector("#" + targetId + " input");
    if (!field) {
        return;
    }
    field.value = JSON.stringify({picture: picture, x: box.x, y: box.y, side: box.side});
    field.dispatchEvent(new Event("input", {bubbles: true}));
}

/** Make one stage interactive (once: the stage is marked). */
function dbcharCropBind(stage) {
    if (stage.getAttribute("data-dbchar-bound")) {
        return;
    }
    stage.setAttribute("data-dbchar-bound", "1");
    var width = Number(stage.dataset.width);
    var height = Number(stage.dataset.height);
    var minSide = Number(stage.dataset.min) || 1;
    var picture = stage.dataset.picture;
    var target = stage.dataset.target;
    var square = stage.querySelector(".dbchar-crop-square");
    var image = stage.querySelector(".dbchar-crop-image");
    if (!square || !image || !(width > 0) || !(height > 0)) {
        return;
    }
    var state = {
        box: dbcharCropFit(
            {x: Number(stage.dataset.x), y: Number(stage.dataset.y), side: Number(stage.dataset.side)},
            width, height, minSide),
        drag: null,
    };

    function draw() {
        var box = state.box;
        square.style.left = (100 * box.x / width) + "%";
        square.style.top = (100 * box.y / height) + "%";
        square.style.width = (100 * box.side / width) + "%";
        square.style.height = (100 * box.side / height) + "%";
        // Mirrored into the markup so what the page holds can be read back (tests, other scripts).
        stage.dataset.x = box.x;
        stage.dataset.y = box.y;
        stage.dataset.side = box.side;
    }

    function commit() {
        dbcharCropWrite(target, picture, state.box);
    }

    square.addEventListener("pointerdown", function(event) {
        if (event.button !== 0) {
            return;
        }
        event.preventDefault();
        var corner = event.target.getAttribute ? event.target.getAttribute("data-corner") : null;
        var box = state.box;
        state.drag = {corner: corner, x: event.clientX, y: event.clientY, start: {x: box.x, y: box.y, side: box.side}};
        square.setPointerCapture(event.pointerId);
        stage.focus();
    });
    square.addEventListener("pointermove", function(event) {
        var drag = state.drag;
        if (!drag) {
            return;
        }
        // Screen pixels to original pixels: the preview is shown at some fraction of the original.
        var scale = width / image.getBoundingClientRect().width;
        var dx = (event.clientX - drag.x) * scale;
        var dy = (event.clientY - drag.y) * scale;
        state.box = drag.corner
            ? dbcharCropResizeCorner(drag.start, drag.corner, dx, dy, width, height, minSide)
            : dbcharCropMove(drag.start, dx, dy, width, height, minSide);
        draw();
    });
    function endDrag() {
        if (state.drag) {
            state.drag = null;
            commit();
        }
    }
    square.addEventListener("pointerup", endDrag);
    square.addEventListener("pointercancel", endDrag);

    var directions = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1]};
    stage.addEventListener("keydown", function(event) {
        var direction = directions[event.key];
        if (!direction) {
            return;
        }
        event.preventDefault();
        var step = event.altKey ? 1 : Math.max(1, Math.round(Math.min(width, height) / 100));
        if (event.shiftKey) {
            var grow = event.key === "ArrowUp" || event.key === "ArrowRight" ? 1 : -1;
            state.box = dbcharCropResizeCentred(state.box, 2 * step * grow, width, height, minSide);
        } else {
            state.box = dbcharCropMove(state.box, direction[0] * step, direction[1] * step, width, height, minSide);
        }
        draw();
        commit();
    });
    draw();
}

/** Bind every stage on the page that is not bound yet. */
function dbcharCropScan() {
    var stages = dbcharCropRoot().querySelectorAll(".dbchar-crop-stage");
    for (var i = 0; i < stages.length; i++) {
        dbcharCropBind(stages[i]);
    }
}

/**
 * Once per page: bind the stages there are and watch for new ones (each picture the user opens
 * replaces the stage's HTML). Guarded: the webui may call its load hooks again, and the standalone
 * page runs this file from its own load event.
 */
function dbcharCropInit() {
    if (window.dbcharCropInitDone) {
        return;
    }
    var root = dbcharCropRoot();
    var watched = root === document ? document.body : root;
    if (!watched) {
        return;
    }
    window.dbcharCropInitDone = true;
    dbcharCropScan();
    new MutationObserver(dbcharCropScan).observe(watched, {childList: true, subtree: true});
}

if (typeof onUiLoaded === "function") {
    onUiLoaded(dbcharCropInit);
} else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", dbcharCropInit);
} else {
    dbcharCropInit();
}
