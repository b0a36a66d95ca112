/* dbchar: the page's JS. Every global here starts with "dbchar" (the webui shares one page). */
/* global gradioApp, onUiLoaded, randomId, requestProgress */

/**
 * The root to look elements up in: the webui's gradioApp() when there, else the document
 * (the standalone page has no webui helpers).
 */
function dbcharRoot() {
    return typeof gradioApp === "function" ? gradioApp() : document;
}

/**
 * Start a dbchar job inside the webui (the button's js hook, see lib_dbchar/ui/jobs.py).
 *
 * Follows the webui's convention: a fresh task id replaces the first argument (a hidden
 * textbox), and requestProgress() polls /internal/progress for it, drawing the webui's progress
 * bar just above the job's status box.
 *
 * Unlike the webui's own submit(), it does not go through create_submit_args(): gradio hands the
 * hook the outputs' current values after the inputs and uploads whatever the hook returns, and
 * create_submit_args() nulls the third value from the end when it is an array (meant for
 * txt2img's gallery output), which for a job with two outputs is its last input. Returning the
 * inputs only avoids both the useless upload and that loss.
 *
 * @param {string} statusId - the element id of the job's status box.
 * @param {number} inputCount - how many of the arguments are inputs (the task id included).
 * @param {IArguments} args - the input values, then the output values, as gradio passes them.
 * @returns {Array} the input values to send to the Python handler, the task id first.
 */
function dbcharSubmitJob(statusId, inputCount, args) {
    var id = randomId();
    var status = dbcharRoot().getElementById(statusId);
    if (status) {
        requestProgress(id, status, null, function() {});
    }
    var res = Array.prototype.slice.call(args, 0, inputCount);
    res[0] = id;
    return res;
}

/**
 * Show dbchar's Merge sub-tab ("Pick a checkpoint" calls this after handing a checkpoint over).
 *
 * Gradio gives the tab buttons no ids, so the button is found by the position of the Merge tab's
 * panel (id dbchar-tab-merge) among the panels of #dbchar-tabs, with the button's text as a
 * fallback. Inside the webui the dbchar top tab is already the one shown (the send button is on it).
 *
 * @returns {boolean} true when the Merge tab was selected.
 */
function dbcharOpenMergeTab() {
    var tabs = dbcharRoot().querySelector("#dbchar-tabs");
    if (!tabs) {
        return false;
    }
    var nav = tabs.querySelector(":scope > .tab-nav");
    var buttons = nav ? Array.prototype.slice.call(nav.querySelectorAll(":scope > button")) : [];
    var panels = Array.prototype.slice.call(tabs.querySelectorAll(":scope > .tabitem"));
    var index = panels.findIndex(function(panel) {
        return panel.id === "dbchar-tab-merge";
    });
    var button = index >= 0 && index < buttons.length ? buttons[index] : null;
    if (!button) {
        button = buttons.find(function(b) {
            return b.textContent.trim() === "Merge";
        }) || null;
    }
    if (!button) {
        return false;
    }
    button.click();
    tabs.scrollIntoView({behavior: "smooth", block: "start"});
    return true;
}

/**
 * Once per page: mark the dbchar tabs as scripted (CSS and tests can rely on the class).
 * Guarded because the webui may call its load hooks again, and the standalone page runs this
 * file from its own load event.
 */
function dbcharInit() {
    if (window.dbcharInitDone) {
        return;
    }
    var tabs = dbcharRoot().getElementById("dbchar-tabs");
    if (!tabs) {
        return;
    }
    window.dbcharInitDone = true;
    tabs.classList.add("dbchar-ready");
}

if (typeof onUiLoaded === "function") {
    onUiLoaded(dbcharInit);
} else {
    dbcharInit();
}
