import CNewt
import Foundation
import MartletCore

/// The newt screen: initialised once for the text UI, restored by `finish()`.
enum NewtScreen {
    /// Starts newt on the controlling terminal with the key help on the bottom line.
    static func start() throws {
        guard isatty(STDIN_FILENO) == 1, isatty(STDOUT_FILENO) == 1 else {
            throw MartletError(
                .unavailable, "the text UI needs a terminal on stdin and stdout",
                hint: "run it on a console, or install unattended with `martlet-installer install --answer FILE`")
        }
        guard newtInit() == 0 else {
            throw MartletError(.failed, "newt could not initialise the terminal", hint: "check TERM")
        }
        newtCls()
        newtDrawRootText(0, 0, "Martlet hypervisor host installer")
        newtPushHelpLine(" <Enter> next | <Tab>/<Arrows> move | <Space> select | <F12> next | <Esc> quit")
    }

    static func finish() { newtFinished() }

    static func message(_ title: String, _ text: String, button: String = "OK") {
        martlet_newtWinMessage(title, button, text)
    }

    /// A yes/no question; true when the first button was chosen.
    static func confirm(_ title: String, _ text: String, yes: String = "Yes", no: String = "No") -> Bool {
        martlet_newtWinChoice(title, yes, no, text) == 1
    }

    /// A question whose "yes" destroys something. The focus starts on `no`, so Enter alone (a
    /// key held down, one Enter too many after the summary) never confirms: the user moves to
    /// `yes` on purpose. Esc is `no` too.
    static func confirmDestructive(_ title: String, _ text: String, yes: String, no: String = "Cancel") -> Bool {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let width = min(74, max(44, (lines.map(\.count).max() ?? 0) + 4))
        let form = NewtForm(title: title, width: width, height: lines.count + 3)
        defer { form.close() }
        _ = form.text(1, 0, width: width - 2, height: lines.count, text)
        form.buttons([no, yes], y: lines.count + 1, right: width - 1, primary: 0)
        return form.run() == .button(1)
    }
}

/// One window with its form. Components are owned by the form and freed with it; the window
/// is popped when the form is closed.
final class NewtForm {
    let form: newtComponent
    private var open = true
    private var buttons: [newtComponent] = []

    /// The way a form run ended.
    enum Exit: Equatable {
        case button(Int)
        case escape
        /// Enter in an entry or list that exits the form.
        case other
    }

    init(title: String, width: Int = 74, height: Int = 19) {
        newtCenteredWindow(UInt32(width), UInt32(height), title)
        form = newtForm(nil, nil, 0)
        newtFormAddHotKey(form, martlet_NEWT_KEY_ESCAPE)
        // Enter ends the form from any control (a list, an entry, a radio button), so it means
        // "this is my choice, go on"; run() turns it into the focused or the primary button.
        newtFormAddHotKey(form, martlet_NEWT_KEY_ENTER)
    }

    deinit { close() }

    func close() {
        guard open else { return }
        open = false
        newtFormDestroy(form)
        newtPopWindow()
    }

    private func add(_ component: newtComponent) -> newtComponent {
        newtFormAddComponent(form, component)
        return component
    }

    @discardableResult
    func label(_ x: Int, _ y: Int, _ text: String) -> newtComponent {
        add(newtLabel(Int32(x), Int32(y), text))
    }

    /// A text block, scrolled when it is taller than `height`.
    @discardableResult
    func text(_ x: Int, _ y: Int, width: Int, height: Int, _ text: String) -> newtComponent {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).count
        let box = newtTextbox(
            Int32(x), Int32(y), Int32(width), Int32(height),
            NEWT_FLAG_WRAP | (lines > height ? NEWT_FLAG_SCROLL : 0))!
        newtTextboxSetText(box, text)
        return add(box)
    }

    func entry(_ x: Int, _ y: Int, width: Int, _ initial: String, password: Bool = false) -> NewtEntry {
        let component = newtEntry(
            Int32(x), Int32(y), initial, Int32(width), nil,
            NEWT_FLAG_SCROLL | (password ? NEWT_FLAG_PASSWORD : 0))!
        return NewtEntry(add(component))
    }

    func listbox(_ x: Int, _ y: Int, height: Int, width: Int, items: [String], current: Int) -> NewtListbox {
        let box = newtListbox(Int32(x), Int32(y), Int32(height), NEWT_FLAG_SCROLL | NEWT_FLAG_BORDER)!
        for (index, item) in items.enumerated() {
            newtListboxAppendEntry(box, item, UnsafeRawPointer(bitPattern: index + 1))
        }
        newtListboxSetWidth(box, Int32(width))
        if !items.isEmpty { newtListboxSetCurrent(box, Int32(min(max(current, 0), items.count - 1))) }
        return NewtListbox(add(box))
    }

    func checkbox(_ x: Int, _ y: Int, _ text: String, checked: Bool) -> NewtCheckbox {
        NewtCheckbox(add(newtCheckbox(Int32(x), Int32(y), text, checked ? 42 : 32, nil, nil)))
    }

    /// Radio buttons stacked vertically from (x, y); returns the group.
    func radios(_ x: Int, _ y: Int, _ texts: [String], selected: Int, horizontal: Bool = false) -> NewtRadioGroup {
        var previous: newtComponent?
        var members: [newtComponent] = []
        var column = x
        for (index, text) in texts.enumerated() {
            let button = newtRadiobutton(
                Int32(column), Int32(horizontal ? y : y + index), text, index == selected ? 1 : 0, previous)!
            members.append(add(button))
            previous = button
            if horizontal { column += text.count + 6 }
        }
        return NewtRadioGroup(members)
    }

    func checkboxTree(_ x: Int, _ y: Int, height: Int, width: Int, items: [String], selected: Set<Int>)
        -> NewtCheckboxTree
    {
        let tree = newtCheckboxTree(Int32(x), Int32(y), Int32(height), NEWT_FLAG_SCROLL)!
        for (index, item) in items.enumerated() {
            var path: [Int32] = [NEWT_ARG_APPEND, NEWT_ARG_LAST]
            newtCheckboxTreeAddArray(tree, item, UnsafeRawPointer(bitPattern: index + 1), 0, &path)
            if selected.contains(index) {
                newtCheckboxTreeSetEntryValue(tree, UnsafeRawPointer(bitPattern: index + 1), 42)
            }
        }
        newtCheckboxTreeSetWidth(tree, Int32(width))
        return NewtCheckboxTree(add(tree), count: items.count)
    }

    func scale(_ x: Int, _ y: Int, width: Int, full: Int) -> newtComponent {
        add(newtScale(Int32(x), Int32(y), Int32(width), Int64(full)))
    }

    /// Compact buttons in a row at `y`, right-aligned to `right`; run() reports their index.
    /// Enter outside the buttons presses the primary one: the last (Next, Install) unless given.
    func buttons(_ titles: [String], y: Int, right: Int = 72, primary: Int? = nil) {
        primaryIndex = primary ?? titles.count - 1
        var x = right - titles.reduce(0) { $0 + $1.count + 5 }
        for title in titles {
            buttons.append(add(newtCompactButton(Int32(x), Int32(y), title)))
            x += title.count + 5
        }
    }

    func run() -> Exit {
        if !focusPlaced {
            focusPlaced = true
            // newt focuses the first control that takes focus: on a screen of text and buttons
            // that is the first button (Quit, Back), so Enter would leave. Focus the primary one.
            if buttons.indices.contains(primaryIndex),
                buttons.contains(where: { $0 == newtFormGetCurrent(form) })
            {
                newtFormSetCurrent(form, buttons[primaryIndex])
            }
        }
        var key: Int32 = 0
        let component = martlet_newtFormRun(form, &key)
        if component == nil {
            if key == martlet_NEWT_KEY_ESCAPE { return .escape }
            guard key == martlet_NEWT_KEY_ENTER, !buttons.isEmpty else { return .other }
            let focused = newtFormGetCurrent(form)
            return .button(buttons.firstIndex { $0 == focused } ?? primaryIndex)
        }
        if let index = buttons.firstIndex(where: { $0 == component }) { return .button(index) }
        return .other
    }

    private var focusPlaced = false
    private var primaryIndex = 0

    /// Draws the form without waiting for a key (progress screens).
    func draw() {
        newtDrawForm(form)
        newtRefresh()
    }
}

struct NewtEntry {
    let component: newtComponent
    init(_ component: newtComponent) { self.component = component }
    var value: String { String(cString: newtEntryGetValue(component)) }
}

struct NewtListbox {
    let component: newtComponent
    init(_ component: newtComponent) { self.component = component }
    /// Index of the highlighted item, nil when the list is empty.
    var current: Int? {
        guard let data = newtListboxGetCurrent(component) else { return nil }
        return Int(bitPattern: data) - 1
    }
}

struct NewtCheckbox {
    let component: newtComponent
    init(_ component: newtComponent) { self.component = component }
    var checked: Bool { newtCheckboxGetValue(component) != 32 }
}

struct NewtRadioGroup {
    let members: [newtComponent]
    init(_ members: [newtComponent]) { self.members = members }
    var selected: Int {
        guard let first = members.first, let current = newtRadioGetCurrent(first) else { return 0 }
        return members.firstIndex(of: current) ?? 0
    }
}

struct NewtCheckboxTree {
    let component: newtComponent
    let count: Int
    init(_ component: newtComponent, count: Int) {
        self.component = component
        self.count = count
    }
    var selected: Set<Int> {
        Set((0..<count).filter { newtCheckboxTreeGetEntryValue(component, UnsafeRawPointer(bitPattern: $0 + 1)) == 42 })
    }
}
